"""What an image in a chat request costs in prompt tokens, by OpenAI's rule for the gpt-4o family.

``detail: "low"``: 85 tokens, whatever the size. Otherwise the image is scaled down to fit a
2048 x 2048 square, then down again until its short side is at most 768 pixels, and cut into
512-pixel tiles: 85 + 170 per tile (a 1024 x 1024 image: 765; 2048 x 4096: 1105). Images are
never scaled up, so a small one is a single tile.

The size is read from the image's header in a ``data:`` URL (Pillow's ``Image.open`` reads only
the header; the pixels are never decoded). An image we cannot measure here — an ``http(s)``
URL, which the provider fetches itself, or data that is not an image — counts as the worst
case, so a hold built on this never runs short.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any

from PIL import Image, UnidentifiedImageError

LOW_DETAIL_TOKENS = 85
BASE_TOKENS = 85
TILE_TOKENS = 170
TILE_SIZE = 512
FIT_SIZE = 2048
SHORT_SIDE = 768
# The most tiles an image can have under the rule (768 x 2048: 2 x 4 tiles).
WORST_CASE_TOKENS = BASE_TOKENS + TILE_TOKENS * 8

_DATA_URL = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)
# Enough of the data to hold any header worth reading (a JPEG's size marker comes after its
# EXIF and colour profile segments, usually well within this); base64 chars, a multiple of 4.
_HEAD_CHARS = 96 * 1024


def tokens_for_size(width: int, height: int, *, detail: str | None = None) -> int:
    """The prompt tokens of a ``width`` x ``height`` image at ``detail``."""
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if width <= 0 or height <= 0:
        return WORST_CASE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > FIT_SIZE:
        scale = FIT_SIZE / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > SHORT_SIDE:
        scale = SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / TILE_SIZE) * math.ceil(h / TILE_SIZE)
    return BASE_TOKENS + TILE_TOKENS * tiles


def _b64decode(text: str) -> bytes:
    compact = "".join(text.split())
    compact = compact[: len(compact) - len(compact) % 4]
    return base64.b64decode(compact)


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return int(width), int(height)


def data_url_size(url: str) -> tuple[int, int] | None:
    """The pixel size of the image in a base64 ``data:`` URL, from its header; None when it is
    not one or cannot be read."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    payload = url[match.end() :]
    # Most headers are in the first few kilobytes: decode only those, and all of it only when
    # they did not say.
    attempts = [payload[:_HEAD_CHARS]] if len(payload) > _HEAD_CHARS else []
    attempts.append(payload)
    for attempt in attempts:
        try:
            return _size(_b64decode(attempt))
        # A header claiming absurd dimensions (Pillow's decompression bomb check: an error, or
        # a warning where warnings are errors) counts as the worst case too.
        except (
            binascii.Error,
            ValueError,
            OSError,
            SyntaxError,
            UnidentifiedImageError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ):
            continue
    return None


def image_prompt_tokens(image_url: object) -> int:
    """Prompt tokens of one ``image_url`` content part's object (``{"url", "detail"}``, or the
    URL alone)."""
    detail: Any = None
    url: Any = image_url
    if isinstance(image_url, dict):
        detail, url = image_url.get("detail"), image_url.get("url")
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if not isinstance(url, str):
        return WORST_CASE_TOKENS
    size = data_url_size(url)
    if size is None:
        return WORST_CASE_TOKENS
    return tokens_for_size(*size, detail=detail if isinstance(detail, str) else None)


def content_image_tokens(content: object) -> int:
    """Prompt tokens of the image parts of one message's ``content`` (0 for plain text)."""
    if not isinstance(content, list):
        return 0
    return sum(
        image_prompt_tokens(part.get("image_url"))
        for part in content
        if isinstance(part, dict) and part.get("type") == "image_url"
    )
