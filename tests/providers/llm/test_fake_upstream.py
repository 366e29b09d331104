"""The fake upstream's own contract, checked on the wire with the standard library."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest
from django.conf import settings

from providers.llm.fake_upstream import (
    BAD_USAGE,
    HTML_PAGE,
    STREAM_ERROR,
    TEXT_BODY,
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
    assert choice["message"]["content"] == "Echo: 42"  # the tool result, answered
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


class RecordingEvent(threading.Event):
    """The server's ``stopping`` event, telling the test when a handler starts waiting on it
    (as @hang does), so the test waits on that state instead of polling."""

    def __init__(self) -> None:
        super().__init__()
        self.waited_on = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited_on.set()
        return super().wait(timeout)


def _ours(thread: threading.Thread) -> bool:
    """The fake server's threads; other tests' background threads (executors, timers) may
    come and go meanwhile."""
    return thread.name.startswith("fake-upstream")


def stop_within_bound(upstream: FakeUpstream) -> None:
    """Stop the server, failing (not hanging the suite) if stop() does not return: the bound
    is generous, the assertion is only that it returns at all."""
    stopper = threading.Thread(target=upstream.stop, name="test-stopper")
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive(), "stop() did not return"


# @stall without streaming is exactly @hang.
@pytest.mark.parametrize("model", ["fake-gpt@hang", "fake-gpt@stall2"])
def test_it_stops_at_once_with_a_hung_request_and_leaves_no_threads(model):
    threads_before = set(threading.enumerate())
    upstream = FakeUpstream().start()
    upstream.server.stopping = stopping = RecordingEvent()
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(chat_body(model)),
        headers={"Authorization": "Bearer sk-x", "Content-Type": "application/json"},
    )
    assert stopping.waited_on.wait(timeout=10)  # the handler is now asleep in @hang

    stop_within_bound(upstream)

    # stop() closed the connection without an answer (a timeout here would mean it is open).
    with pytest.raises(http.client.RemoteDisconnected):
        connection.getresponse()
    connection.close()
    assert [t for t in threading.enumerate() if t not in threads_before and _ours(t)] == []


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
        try:
            # A bound, not a speed check: a loaded machine may take its time; a hang fails.
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert code == 0
        assert "stopped" in process.stdout.read()


# --- hostile upstreams, checked byte by byte on a raw socket -----------------------------------


def send_chat(port: int, body: dict, *, keep_alive: bool = False) -> socket.socket:
    """Sends one chat request on a fresh socket and returns it, to read the answer from. Unless
    ``keep_alive``, the request asks the server to close after answering, so reading to EOF
    gets exactly one response. Every read is bounded by the socket's timeout."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer sk-x\r\nContent-Type: application/json\r\n"
        + (b"" if keep_alive else b"Connection: close\r\n")
        + b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


def read_until(sock: socket.socket, done) -> bytes:
    received = b""
    while not done(received):
        data = sock.recv(65536)
        assert data, f"the server closed the connection early, after {received!r}"
        received += data
    return received


@dataclass
class Wire:
    """One HTTP response as it came off the socket."""

    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes  # as sent: still chunked when it is

    def chunks(self) -> tuple[list[bytes], bool]:
        """The HTTP chunks of a chunked body (the server writes one SSE event per chunk), and
        whether the zero-length chunk ended the body. Fails on a torn chunk or trailing bytes."""
        assert self.headers["transfer-encoding"] == "chunked"
        chunks, ended, rest = dechunk(self.body)
        assert rest == b"", f"bytes after the last whole chunk: {rest!r}"
        return chunks, ended


def parse_wire(raw: bytes) -> Wire:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete head in {raw!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Wire(int(status_line.split()[1]), headers, body)


def dechunk(body: bytes) -> tuple[list[bytes], bool, bytes]:
    """(the whole chunks, whether the zero-length chunk was reached, the bytes left over)."""
    chunks = []
    while True:
        size_line, crlf, after = body.partition(b"\r\n")
        if not crlf:
            return chunks, False, body
        size = int(size_line, 16)
        if len(after) < size + 2:
            return chunks, False, body
        assert after[size : size + 2] == b"\r\n"
        if size == 0:
            return chunks, True, after[2:]
        chunks.append(after[:size])
        body = after[size + 2 :]


def exchange(upstream: FakeUpstream, body: dict, *, keep_alive: bool = False) -> Wire:
    """POST, then read everything until the server closes the connection."""
    with send_chat(upstream.port, body, keep_alive=keep_alive) as sock:
        return parse_wire(read_to_eof(sock))


def event(chunk: bytes):
    """One well-formed SSE event: its JSON, or "[DONE]"."""
    assert chunk.startswith(b"data: ")
    assert chunk.endswith(b"\n\n")
    data = chunk.removeprefix(b"data: ").removesuffix(b"\n\n")
    return "[DONE]" if data == b"[DONE]" else json.loads(data)


def streamed(model: str, **extra) -> dict:
    return chat_body(model, stream=True, stream_options={"include_usage": True}, **extra)


def assert_a_normal_stream(events: list) -> None:
    """opening, "Echo: ", "hi ", "there", finish "stop", usage, [DONE]."""
    assert [e["choices"][0]["delta"] for e in events[:4]] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Echo: "},
        {"content": "hi "},
        {"content": "there"},
    ]
    assert events[4]["choices"][0]["finish_reason"] == "stop"
    assert (events[5]["choices"], events[5]["usage"]["completion_tokens"]) == ([], 3)
    assert events[6:] == ["[DONE]"]


@pytest.mark.parametrize(
    ("marker", "faults"),
    [
        ("badjson", Faults(bad_json_after=0)),
        ("badjson3", Faults(bad_json_after=3)),
        ("html", Faults(html=True)),
        ("text", Faults(text=True)),
        ("surrogate", Faults(surrogate=True)),
        ("nul", Faults(nul=True)),
        ("cut2", Faults(cut_after=2)),
        ("stall1", Faults(stall_after=1)),
        ("ignorecap", Faults(ignore_cap=True)),
        ("overusage99", Faults(over_usage=99)),
        ("badusage", Faults(bad_usage=True)),
        ("errorevent0", Faults(error_event_after=0)),
        ("nochoices", Faults(no_choices=True)),
    ],
)
def test_it_parses_the_hostile_markers(marker, faults):
    assert parse_model(f"fake-gpt@{marker}") == ("fake-gpt", faults)


@pytest.mark.parametrize("marker", ["cut", "stall", "overusage", "errorevent", "badjsonx", "htm"])
def test_it_answers_400_to_a_marker_it_does_not_know(fake_upstream: FakeUpstream, marker):
    wire = exchange(fake_upstream, chat_body(f"fake-gpt@{marker}"))

    assert wire.status == 400
    assert json.loads(wire.body)["error"]["param"] == "model"


def test_it_still_drops_at_an_event_boundary(fake_upstream: FakeUpstream):
    chunks, ended = exchange(fake_upstream, streamed("fake-gpt@drop1")).chunks()
    past_the_end, past_ended = exchange(fake_upstream, streamed("fake-gpt@drop9")).chunks()

    assert [event(c)["choices"][0]["delta"].get("content") for c in chunks] == ["", "Echo: "]
    assert not ended
    assert len(past_the_end) == 4  # the opening and every token, no finish chunk
    assert not past_ended


@pytest.mark.parametrize(("marker", "after"), [("badjson", 0), ("badjson2", 2)])
def test_badjson_streams_one_event_that_is_not_json_then_the_rest(
    fake_upstream: FakeUpstream, marker, after
):
    chunks, ended = exchange(fake_upstream, streamed(f"fake-gpt@{marker}")).chunks()

    completion_id = event(chunks[0])["id"]
    assert chunks[1 + after] == f'data: {{"id": "{completion_id}", "choices": [\n\n'.encode()
    with pytest.raises(json.JSONDecodeError):
        event(chunks[1 + after])
    assert_a_normal_stream([event(c) for c in chunks[: 1 + after] + chunks[2 + after :]])
    assert ended


def test_badjson_without_streaming_sends_a_whole_response_of_broken_json(
    fake_upstream: FakeUpstream,
):
    wire = exchange(fake_upstream, chat_body("fake-gpt@badjson"))

    assert wire.status == 200
    assert wire.headers["content-type"] == "application/json"
    assert int(wire.headers["content-length"]) == len(wire.body)  # HTTP-wise complete
    assert wire.body.startswith(b'{"id": "chatcmpl-fake')
    with pytest.raises(json.JSONDecodeError):
        json.loads(wire.body)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("marker", "content_type", "page"),
    [("html", "text/html", HTML_PAGE), ("text", "text/plain", TEXT_BODY)],
)
def test_html_and_text_answer_200_with_a_body_that_is_not_json(
    fake_upstream: FakeUpstream, marker, content_type, page, stream
):
    wire = exchange(fake_upstream, chat_body(f"fake-gpt@{marker}", stream=stream))

    assert wire.status == 200
    assert wire.headers["content-type"] == content_type
    assert "transfer-encoding" not in wire.headers  # not SSE, even when a stream was asked for
    assert int(wire.headers["content-length"]) == len(wire.body)
    assert wire.body == page
    assert b"data:" not in wire.body
    with pytest.raises(json.JSONDecodeError):
        json.loads(wire.body)


def test_the_html_page_looks_like_a_proxys_error_page():
    assert HTML_PAGE.startswith(b"<!DOCTYPE html>")
    assert b"<title>502 Bad Gateway</title>" in HTML_PAGE


BAD_CHARACTERS = [("surrogate", b"\\ud800", "\ud800"), ("nul", b"\\u0000", "\x00")]


@pytest.mark.parametrize(("marker", "escape", "character"), BAD_CHARACTERS)
def test_a_bad_character_arrives_escaped_in_the_second_content_chunk(
    fake_upstream: FakeUpstream, marker, escape, character
):
    wire = exchange(fake_upstream, streamed(f"fake-gpt@{marker}"))
    chunks, ended = wire.chunks()

    assert wire.body.count(escape) == 1  # the six characters, literally, on the wire
    assert b'"delta": {"content": "' + escape + b'hi "}' in chunks[2]
    assert event(chunks[2])["choices"][0]["delta"]["content"] == character + "hi "
    assert ended


@pytest.mark.parametrize(("marker", "escape", "character"), BAD_CHARACTERS)
def test_a_bad_character_arrives_escaped_in_the_message(
    fake_upstream: FakeUpstream, marker, escape, character
):
    wire = exchange(fake_upstream, chat_body(f"fake-gpt@{marker}"))

    assert b'"content": "Echo: ' + escape + b'hi there"' in wire.body
    content = json.loads(wire.body)["choices"][0]["message"]["content"]
    assert content == f"Echo: {character}hi there"


def test_a_lone_surrogate_is_valid_json_but_not_storable_text(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, chat_body("fake-gpt@surrogate"))

    content = json.loads(wire.body)["choices"][0]["message"]["content"]
    with pytest.raises(UnicodeEncodeError):
        content.encode()


def test_cut_sends_the_first_half_of_an_event_then_closes(fake_upstream: FakeUpstream):
    chunks, ended = exchange(fake_upstream, streamed("fake-gpt@cut1")).chunks()

    assert len(chunks) == 3
    # What the next event would have been: the previous one with the next token.
    whole = event(chunks[1])
    whole["choices"][0]["delta"]["content"] = "hi "
    whole_bytes = f"data: {json.dumps(whole)}\n\n".encode()
    assert chunks[2] == whole_bytes[: len(whole_bytes) // 2]
    assert b"\n\n" not in chunks[2]
    assert not ended


def test_cut_past_the_reply_cuts_the_finish_chunk(fake_upstream: FakeUpstream):
    chunks, ended = exchange(fake_upstream, streamed("fake-gpt@cut9")).chunks()

    assert len(chunks) == 5  # the opening, three tokens, half the finish chunk
    assert b'"content": "there"' in chunks[3]
    assert chunks[4].startswith(b'data: {"id": "chatcmpl-fake')
    assert not chunks[4].endswith(b"\n\n")
    assert not ended


def test_cut_without_streaming_sends_half_the_body_then_closes(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, chat_body("fake-gpt@cut1"))

    assert wire.status == 200
    assert int(wire.headers["content-length"]) // 2 == len(wire.body)
    assert wire.body.startswith(b'{"id": "chatcmpl-fake')


def has_chunks(count: int):
    def done(received: bytes) -> bool:
        _, separator, body = received.partition(b"\r\n\r\n")
        return bool(separator) and len(dechunk(body)[0]) >= count

    return done


def test_stall_sends_nothing_more_mid_stream_until_stopped_and_leaves_no_threads():
    threads_before = set(threading.enumerate())
    upstream = FakeUpstream().start()
    with send_chat(upstream.port, streamed("fake-gpt@stall2"), keep_alive=True) as sock:
        received = read_until(sock, has_chunks(3))  # the opening and two tokens
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing more yet, and still open (no EOF)
            sock.recv(1)
        sock.settimeout(10)

        stop_within_bound(upstream)

        # The server closed the connection (a timeout here would mean it is still open) and
        # sent nothing at all after the stall: no finish chunk, no end of the chunked body.
        assert read_to_eof(sock) == b""
    chunks, ended = parse_wire(received).chunks()
    assert [event(c)["choices"][0]["delta"]["content"] for c in chunks] == ["", "Echo: ", "hi "]
    assert not ended
    assert [t for t in threading.enumerate() if t not in threads_before and _ours(t)] == []


def test_a_stalled_stream_lets_its_thread_go_when_the_client_leaves():
    upstream = FakeUpstream().start()
    try:
        threads_before = set(threading.enumerate())
        with send_chat(upstream.port, streamed("fake-gpt@stall0"), keep_alive=True) as sock:
            read_until(sock, has_chunks(1))
            handlers = [t for t in threading.enumerate() if t not in threads_before]
            assert len(handlers) == 1
        handlers[0].join(timeout=30)  # the client has closed: the handler sees it and ends

        assert not handlers[0].is_alive()
        assert exchange(upstream, chat_body()).status == 200
    finally:
        stop_within_bound(upstream)


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_ignorecap_sends_the_whole_reply_whatever_the_cap(fake_upstream: FakeUpstream, limit):
    capped = exchange(fake_upstream, chat_body(**{limit: 1}))
    wire = exchange(fake_upstream, chat_body("fake-gpt@ignorecap", **{limit: 1}))
    chunks, ended = exchange(fake_upstream, streamed("fake-gpt@ignorecap", **{limit: 1})).chunks()

    assert json.loads(capped.body)["choices"][0]["finish_reason"] == "length"  # as usual
    completion = json.loads(wire.body)
    assert completion["choices"][0]["message"]["content"] == "Echo: hi there"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["completion_tokens"] == 3
    assert_a_normal_stream([event(c) for c in chunks])
    assert ended


def test_overusage_reports_the_completion_tokens_it_is_told(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, chat_body("fake-gpt@overusage5000"))
    chunks, _ = exchange(fake_upstream, streamed("fake-gpt@overusage5000")).chunks()

    completion = json.loads(wire.body)
    assert completion["choices"][0]["message"]["content"] == "Echo: hi there"
    usage = completion["usage"]
    assert usage["completion_tokens"] == 5000
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5000
    assert event(chunks[-2])["usage"] == usage
    assert [event(c)["choices"][0]["delta"].get("content") for c in chunks[1:4]] == [
        "Echo: ",
        "hi ",
        "there",
    ]


def test_badusage_sends_a_usage_of_the_wrong_types(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, chat_body("fake-gpt@badusage"))
    chunks, _ = exchange(fake_upstream, streamed("fake-gpt@badusage")).chunks()

    for raw in (wire.body, chunks[-2]):
        assert b'"prompt_tokens": null, "completion_tokens": "many"' in raw
    assert json.loads(wire.body)["usage"] == BAD_USAGE
    assert event(chunks[-2])["usage"] == BAD_USAGE


def test_errorevent_sends_openais_mid_stream_error_then_ends_and_closes(
    fake_upstream: FakeUpstream,
):
    # keep-alive: reading to EOF only ends because the server closes the connection.
    wire = exchange(fake_upstream, streamed("fake-gpt@errorevent1"), keep_alive=True)
    chunks, ended = wire.chunks()

    assert wire.status == 200
    assert len(chunks) == 3
    assert event(chunks[1])["choices"][0]["delta"] == {"content": "Echo: "}
    assert chunks[2] == (
        b'data: {"error": {"message": "The server had an error while processing your request. '
        b'Sorry about that!", "type": "server_error", "code": null}}\n\n'
    )
    assert event(chunks[2]) == STREAM_ERROR
    assert ended  # the chunked body is complete: the error is the last event


def test_errorevent_without_streaming_is_a_500(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, chat_body("fake-gpt@errorevent1"))
    _, _, plain = request(fake_upstream, "POST", "/v1/chat/completions", chat_body("fake-gpt@500"))

    assert wire.status == 500
    assert wire.body == plain


def test_nochoices_streams_chunks_without_choices(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, streamed("fake-gpt@nochoices"))
    chunks, ended = wire.chunks()

    events = [event(c) for c in chunks]
    assert b"finish_reason" not in wire.body
    assert [(e["choices"], e["usage"]) for e in events[:5]] == [([], None)] * 5
    assert events[5]["usage"]["completion_tokens"] == 3
    assert events[6:] == ["[DONE]"]
    assert ended


def test_nochoices_answers_json_without_choices(fake_upstream: FakeUpstream):
    wire = exchange(fake_upstream, chat_body("fake-gpt@nochoices"))

    completion = json.loads(wire.body)
    assert wire.status == 200
    assert completion["choices"] == []
    assert completion["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("param", "value"),
    [("max_tokens", "5"), ("max_completion_tokens", 2.5), ("max_tokens", True)],
)
def test_a_cap_that_is_not_an_integer_is_a_400_naming_it(
    fake_upstream: FakeUpstream, param, value, stream
):
    wire = exchange(fake_upstream, chat_body(**{param: value}, stream=stream))

    assert wire.status == 400
    error = json.loads(wire.body)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert exchange(fake_upstream, chat_body()).status == 200


HOSTILE = [
    "badjson",
    "badjson2",
    "html",
    "text",
    "surrogate",
    "nul",
    "cut0",
    "cut2",
    "cut9",
    "drop1",
    "ignorecap",
    "overusage7",
    "badusage",
    "errorevent0",
    "errorevent9",
    "nochoices",
    "surrogate@nul@badjson1@nochoices@badusage",
    "tool@cut2",
    "tool@surrogate@errorevent1",
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("markers", HOSTILE)
def test_the_server_stays_healthy_after_a_hostile_answer(
    fake_upstream: FakeUpstream, markers, stream
):
    hostile = exchange(fake_upstream, chat_body(f"fake-gpt@{markers}", stream=stream, tools=TOOLS))
    status, _, raw = request(fake_upstream, "POST", "/v1/chat/completions", chat_body())

    assert hostile.status in (200, 500)
    assert status == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Echo: hi there"
