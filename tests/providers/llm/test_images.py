"""Image prompt tokens by OpenAI's rule for the gpt-4o family (providers.llm.images)."""

import base64
import io
import random
import struct
import zlib

import pytest
from PIL import Image

from providers.llm.images import (
    WORST_CASE_TOKENS,
    content_image_tokens,
    data_url_size,
    image_prompt_tokens,
    tokens_for_size,
)


def data_url(size: tuple[int, int], fmt: str = "PNG", mime: str = "image/png") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, fmt)
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (1024, 1024, 765),  # 768 x 768: 4 tiles
        (2048, 4096, 1105),  # 1024 x 2048, then 768 x 1536: 6 tiles
        (4096, 8192, 1105),  # the same shape, bigger: scaled to the same
        (512, 512, 255),  # small images are not scaled up: one tile
        (100, 100, 255),
        (768, 2048, 85 + 170 * 8),  # the most tiles there can be
        (2048, 2048, 765),
    ],
)
def test_it_counts_tiles_of_the_scaled_image(width, height, tokens):
    assert tokens_for_size(width, height) == tokens


def test_it_reads_the_size_from_a_data_url_header():
    assert data_url_size(data_url((1024, 1024))) == (1024, 1024)
    assert image_prompt_tokens({"url": data_url((1024, 1024)), "detail": "auto"}) == 765
    assert image_prompt_tokens({"url": data_url((2048, 4096), "JPEG", "image/jpeg")}) == 1105
    assert image_prompt_tokens(data_url((64, 64))) == 255  # the URL alone


def test_low_detail_is_85_whatever_the_size():
    assert image_prompt_tokens({"url": data_url((2048, 4096)), "detail": "low"}) == 85
    assert image_prompt_tokens({"url": "https://example.com/a.png", "detail": "low"}) == 85


def test_what_cannot_be_measured_counts_as_the_worst_case():
    assert WORST_CASE_TOKENS == 85 + 170 * 8
    assert image_prompt_tokens({"url": "https://example.com/cat.png"}) == WORST_CASE_TOKENS
    assert image_prompt_tokens({"url": "data:image/png;base64,bm90IGFuIGltYWdl"}) == (
        WORST_CASE_TOKENS
    )
    assert image_prompt_tokens({"url": "data:image/png;base64,%%%"}) == WORST_CASE_TOKENS
    assert image_prompt_tokens({"url": 42}) == WORST_CASE_TOKENS
    assert image_prompt_tokens(None) == WORST_CASE_TOKENS
    # A header claiming 100000 x 100000 pixels: Pillow's bomb check refuses to open it.
    bomb = base64.b64encode(png_claiming(100_000, 100_000)).decode()
    assert image_prompt_tokens({"url": f"data:image/png;base64,{bomb}"}) == WORST_CASE_TOKENS


def test_a_large_image_is_measured_from_the_start_of_its_data():
    # Noise does not compress: a PNG far longer than the part of the data decoded first.
    noise = Image.frombytes("RGB", (600, 600), random.Random(7).randbytes(600 * 600 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    assert len(buffer.getvalue()) > 500_000
    url = f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"

    assert data_url_size(url) == (600, 600)
    assert image_prompt_tokens({"url": url}) == 85 + 170 * 4  # 600 x 600: 2 x 2 tiles


def test_a_jpeg_whose_size_comes_late_is_read_whole():
    # A big colour profile before the size marker: not in the first part of the data.
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024)).save(buffer, "JPEG", icc_profile=b"p" * 200_000)
    url = f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}"

    assert image_prompt_tokens({"url": url}) == 765


def test_it_adds_up_the_image_parts_of_a_content():
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": data_url((1024, 1024))}},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png", "detail": "low"}},
    ]
    assert content_image_tokens(content) == 765 + 85
    assert content_image_tokens("plain text") == 0
