"""The fake upstream's own contract, checked on the wire with the standard library."""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chat.llm.fake_upstream import FakeUpstream, Faults, parse_model, reply_tokens


def request(
    upstream: FakeUpstream,
    method: str,
    path: str,
    body: dict | None = None,
    key: str | None = "sk-x",
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def chat_body(model: str = "fake-gpt", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi there"}], **extra}


def test_it_parses_combined_markers():
    assert parse_model("fake-gpt@slow20@drop3@nousage") == (
        "fake-gpt",
        Faults(slow_ms=20, drop_after=3, no_usage=True),
    )
    assert parse_model("fake-gpt-mini") == ("fake-gpt-mini", Faults())


def test_it_refuses_unknown_markers():
    with pytest.raises(ValueError, match="@drop"):
        parse_model("fake-gpt@drop")


def test_its_reply_tokens_join_back_to_the_exact_reply():
    messages = [{"role": "user", "content": "first"}, {"role": "user", "content": "a  b\nc "}]

    assert reply_tokens(messages, Faults()) == ["Echo: ", "a  ", "b\n", "c "]
    assert len(reply_tokens(messages, Faults(words=40))) == 40


def test_it_streams_sse_with_a_usage_chunk_then_done(fake_upstream: FakeUpstream):
    body = chat_body(stream=True, stream_options={"include_usage": True})
    status, headers, raw = request(fake_upstream, "POST", "/v1/chat/completions", body)

    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
        == "Echo: hi there"
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_it_sends_no_usage_chunk_unless_asked(fake_upstream: FakeUpstream):
    _, _, raw = request(fake_upstream, "POST", "/v1/chat/completions", chat_body(stream=True))

    chunks = [json.loads(e[6:]) for e in raw.decode().split("\n\n")[:-2]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)


def test_it_requires_a_key_and_never_echoes_it(fake_upstream: FakeUpstream):
    missing, _, _ = request(fake_upstream, "GET", "/v1/models", key=None)
    status, _, raw = request(
        fake_upstream, "POST", "/v1/chat/completions", chat_body(), key="sk-bad"
    )

    assert missing == 401
    assert status == 401
    assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert b"sk-bad" not in raw


def test_it_counts_requests_per_model_and_resets(fake_upstream: FakeUpstream):
    request(fake_upstream, "POST", "/v1/chat/completions", chat_body("fake-gpt@500"))
    request(fake_upstream, "POST", "/v1/chat/completions", chat_body("fake-gpt@500"))

    _, _, raw = request(fake_upstream, "GET", "/_fake/stats")
    assert json.loads(raw) == {"requests": {"fake-gpt@500": 2}}
    request(fake_upstream, "DELETE", "/_fake/stats")
    assert fake_upstream.request_counts == {}


def test_it_stops_at_once_with_a_hung_request_and_leaves_no_threads():
    threads_before = set(threading.enumerate())
    upstream = FakeUpstream().start()
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(chat_body("fake-gpt@hang")),
        headers={"Authorization": "Bearer sk-x", "Content-Type": "application/json"},
    )
    while not upstream.request_counts:  # the handler is now asleep in @hang
        time.sleep(0.01)

    started = time.monotonic()
    upstream.stop()

    assert time.monotonic() - started < 1
    with pytest.raises(http.client.RemoteDisconnected):
        connection.getresponse()
    connection.close()
    assert [t for t in threading.enumerate() if t not in threads_before] == []


def test_the_management_command_serves_until_interrupted():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    with subprocess.Popen(
        [sys.executable, "manage.py", "run_fake_upstream", "--port", "0"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            base_url = process.stdout.readline().split()[3]
            port = int(base_url.removeprefix("http://127.0.0.1:").removesuffix("/v1"))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/_fake/stats")
            assert connection.getresponse().status == 200
            connection.close()
        finally:
            process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
        assert "stopped" in process.stdout.read()
