"""Images on /v1/chat/completions: a model not marked vision-capable refuses them before any
call (naming the part), a vision model gets the data URL through unchanged (the fake upstream
checks it is a real image's and echoes what it got)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client
from PIL import Image

from billing.models import UsageRecord
from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.models import ConnectionModel
from tests.chat.conftest import make_key, serve
from tests.conftest import wait_for_background

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"


def post(key: str, body: Any):
    return Client().post(
        URL,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def png_data_url(size: tuple[int, int] = (32, 24)) -> tuple[str, int]:
    buffer = io.BytesIO()
    Image.new("RGB", size, (250, 200, 10)).save(buffer, "PNG")
    data = buffer.getvalue()
    return f"data:image/png;base64,{base64.b64encode(data).decode()}", len(data)


def with_image(url: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Describe images."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "what is this?"},
            ],
        },
    ]


@pytest.mark.parametrize("model", ["fake-gpt", LOCAL_MODEL_NAME])
def test_a_model_without_vision_refuses_images_before_any_call(
    alice, org_a, project_a, fake_upstream, model
):
    serve(project_a, fake_upstream)
    url, _size = png_data_url()

    answer = post(make_key(alice, org_a, project_a), {"model": model, "messages": with_image(url)})

    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": f"The model {model} cannot read images; pick a vision model.",
        "type": "invalid_request_error",
        "param": "messages[1].content[0]",
        "code": "model_lacks_vision",
    }
    assert fake_upstream.request_counts == {}
    assert not UsageRecord.objects.exists()


def test_an_image_by_address_is_refused_just_the_same(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
    ]

    answer = post(make_key(alice, org_a, project_a), {"model": "fake-gpt", "messages": messages})

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "messages[2].content[1]"
    assert fake_upstream.request_counts == {}


def vision(project_a) -> None:
    model = ConnectionModel.objects.get(name="fake-gpt", connection__project=project_a)
    model.supports_vision = True
    model.save()


def test_a_vision_model_gets_the_data_url_unchanged(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    vision(project_a)
    url, size = png_data_url()

    answer = post(
        make_key(alice, org_a, project_a), {"model": "fake-gpt", "messages": with_image(url)}
    )

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == (
        f"Echo: what is this? [image/png {size} B]"
    )
    assert fake_upstream.request_counts["fake-gpt"] == 1
    assert UsageRecord.objects.get().status == "ok"


@pytest.mark.django_db(transaction=True)
async def test_a_vision_model_streams_its_answer_to_an_image(
    alice, org_a, project_a, fake_upstream
):
    await database_sync_to_async(serve)(project_a, fake_upstream)
    await database_sync_to_async(vision)(project_a)
    key = await database_sync_to_async(make_key)(alice, org_a, project_a)
    url, size = png_data_url((8, 8))

    answer = await AsyncClient().post(
        URL,
        data=json.dumps({"model": "fake-gpt", "messages": with_image(url), "stream": True}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    body = b"".join([chunk async for chunk in answer.streaming_content]).decode()
    await wait_for_background()

    events = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert answer.status_code == 200
    assert text == f"Echo: what is this? [image/png {size} B]"
    assert (await UsageRecord.objects.aget()).status == "ok"


def test_a_vision_model_still_gets_a_bad_image_refused_by_the_upstream(
    alice, org_a, project_a, fake_upstream
):
    serve(project_a, fake_upstream)
    vision(project_a)
    not_an_image = "data:image/png;base64," + base64.b64encode(b"just text").decode()

    answer = post(
        make_key(alice, org_a, project_a),
        {"model": "fake-gpt", "messages": with_image(not_an_image)},
    )

    # Passed through as it came (we do not rewrite a client's images); the upstream said no.
    assert answer.status_code == 400
    assert fake_upstream.request_counts["fake-gpt"] == 1
