"""The fake upstream's own contract, checked on the wire with the standard library."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings

from providers.llm.fake_upstream import (
    FakeUpstream,
    Faults,
    argument_fragments,
    parse_model,
    reply_tokens,
    tool_call,
)


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


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]


def sse_events(raw: bytes) -> list:
    return [
        "[DONE]" if line == "data: [DONE]" else json.loads(line.removeprefix("data: "))
        for line in raw.decode().split("\n\n")
        if line
    ]


def test_it_parses_the_tool_marker():
    assert parse_model("fake-gpt@tool@nousage") == (
        "fake-gpt",
        Faults(tool_call=True, no_usage=True),
    )


def test_its_argument_fragments_join_back_to_the_exact_arguments():
    messages = [{"role": "user", "content": '  날씨 "in"\tSeoul?  '}]
    arguments = tool_call(messages, TOOLS)["arguments"]

    assert json.loads(arguments) == {"query": '  날씨 "in"\tSeoul?  '}
    assert "".join(argument_fragments(arguments)) == arguments
    assert len(argument_fragments(arguments)) > 3


def test_it_streams_a_tool_call_like_openai(fake_upstream: FakeUpstream):
    body = chat_body(
        "fake-gpt@tool", tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    status, _, raw = request(fake_upstream, "POST", "/v1/chat/completions", body)

    events = sse_events(raw)
    assert status == 200
    opening = events[0]["choices"][0]["delta"]
    header = opening["tool_calls"][0]
    assert (opening["role"], opening["content"]) == ("assistant", None)
    assert re.fullmatch(r"call_[0-9a-f]{24}", header["id"])
    assert header == {
        "index": 0,
        "id": header["id"],
        "type": "function",
        "function": {"name": "lookup", "arguments": ""},
    }
    fragments = events[1:-3]
    assert [e["choices"][0]["delta"] for e in fragments] == [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        for piece in argument_fragments('{"query": "hi there"}')
    ]
    assert events[-3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert events[-2]["usage"]["completion_tokens"] == len(fragments)
    assert events[-1] == "[DONE]"


def test_it_answers_a_tool_call_in_json(fake_upstream: FakeUpstream):
    status, _, raw = request(
        fake_upstream, "POST", "/v1/chat/completions", chat_body("fake-gpt@tool", tools=TOOLS)
    )

    choice = json.loads(raw)["choices"][0]
    assert status == 200
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"query": "hi there"}'}


def test_it_answers_in_text_once_the_tool_result_is_back(fake_upstream: FakeUpstream):
    messages = [
        {"role": "user", "content": "hi there"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    body = {"model": "fake-gpt@tool", "messages": messages, "tools": TOOLS}
    _, _, raw = request(fake_upstream, "POST", "/v1/chat/completions", body)

    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Echo: hi there"
    assert "tool_calls" not in choice["message"]


def test_it_refuses_the_tool_marker_without_tools(fake_upstream: FakeUpstream):
    status, _, raw = request(
        fake_upstream, "POST", "/v1/chat/completions", chat_body("fake-gpt@tool")
    )

    assert status == 400
    assert json.loads(raw)["error"]["param"] == "tools"


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
    root = settings.BASE_DIR  # where manage.py is
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
