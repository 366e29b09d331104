"""The load generator of `benchmarks/gateway.py`: one scenario against one target, in a process
of its own (so its CPU is not the servers'), run by gateway.py, never by hand:

    python benchmarks/_gw_load.py < spec.json      # prints RESULT <json>

A closed loop: ``concurrency`` workers share ``requests`` requests, each worker sending its next
one as soon as its last one ended, on a keep-alive connection of its own. The HTTP client is a
minimal HTTP/1.1 one on asyncio streams (Content-Length or chunked bodies, Server-Sent Events
read as they arrive), so that the generator's own CPU, on the same two cores as the servers,
stays small and the same for every target. Web sockets use ``websockets``.

Kinds of scenario:

- ``v1``: ``POST /v1/chat/completions``, no streaming; a reply counts when it is 200 and its
  content is the fake upstream's echo of the prompt.
- ``v1_stream``: the same with ``stream: true`` (and ``include_usage``); time to first token
  is to the first non-empty content delta; every content chunk is counted (50 expected) and
  their text compared with the expected lorem text; the stream must end with ``[DONE]``.
- ``rest_stream``: ``POST /api/v1/projects/<p>/conversations/<c>/messages/?stream=true``, one
  fresh conversation per request; deltas are the app's coalesced frames, so what is compared is
  their text (and the ``done`` event's completion_tokens).
- ``ws``: ``/ws/conversations/<c>/`` sockets, all opened first (not timed), then one message
  sent on ``concurrency`` of them at once per wave, each timed from its own send to its first
  ``delta`` and to its ``done``.

Server CPU (utime + stime of the server's whole process tree, from /proc) and RSS are read just
before and just after the measured requests; warm-up requests come before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

RESULT = "RESULT "
TIMEOUT = 300.0  # an HTTP request
WS_TIMEOUT = 300.0  # a socket reply: 500 at once take a minute or two on a busy machine
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc -------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def _tree(root: int) -> list[int]:
    """``root`` and every descendant alive now."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of the process tree, including its reaped children."""
    total = 0
    for n, pid in enumerate(_tree(root)):
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            # utime, stime are fields 14 and 15 (index 11, 12 here); cutime, cstime 16 and 17.
            total += int(fields[11]) + int(fields[12])
            if n == 0:
                total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def rss_mb(root: int) -> float:
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def snapshot(pids: dict[str, int]) -> dict[str, Any]:
    return {
        "cpu": {name: cpu_seconds(pid) for name, pid in pids.items()},
        "rss": {name: rss_mb(pid) for name, pid in pids.items()},
        "client_cpu": time.process_time(),
        "at": time.perf_counter(),
    }


# --- a small HTTP/1.1 client -------------------------------------------------------------------


class Http:
    """One keep-alive connection; one request at a time."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.hostport = parts.netloc
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.headers: dict[str, str] = {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def start(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """Send a POST and read its status line and headers; returns the status."""
        head = [f"POST {path} HTTP/1.1", f"Host: {self.hostport}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
        data = "\r\n".join(head).encode() + body
        line = b""
        for _ in range(2):  # once more on a fresh connection if a kept-alive one was closed
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None  # noqa: S101 - set just above
            assert self.writer is not None  # noqa: S101
            try:
                self.writer.write(data)
                await self.writer.drain()
                line = await self.reader.readline()
            except ConnectionError:
                line = b""
            if line or fresh:
                break
            self.close()
        if not line:
            self.close()
            raise ConnectionError("the server closed the connection without answering")
        words = line.split()
        if len(words) < 2 or not words[1].isdigit():
            self.close()
            raise ConnectionError(f"not an HTTP status line: {line[:80]!r}")
        status = int(words[1])
        self.headers = {}
        while True:
            line = await self.reader.readline()  # type: ignore[union-attr]
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        return status

    async def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; the connection is closed after if it must be."""
        reader = self.reader
        assert reader is not None  # noqa: S101
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readline()
                    if not size_line:
                        raise ConnectionError("the body ended before its last chunk")
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    data = await reader.readexactly(size)
                    await reader.readexactly(2)
                    yield data
            elif "content-length" in self.headers:
                length = int(self.headers["content-length"])
                if length:
                    yield await reader.readexactly(length)
            else:
                while data := await reader.read(65536):
                    yield data
                self.close()
        except BaseException:
            self.close()
            raise
        if self.headers.get("connection", "").lower() == "close":
            self.close()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.body()])


async def sse_events(http: Http) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each Server-Sent Event; the name is "" when the event has none."""
    buffer = b""
    async for piece in http.body():
        buffer += piece
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            name, data = "", []
            for line in raw.decode().replace("\r", "").split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
            if data:
                yield name, "\n".join(data)


# --- scenarios ---------------------------------------------------------------------------------


class Tally:
    """What the requests of one phase (warm-up or measured) gave."""

    def __init__(self) -> None:
        self.latency: list[float] = []  # seconds, successful requests only
        self.ttft: list[float] = []
        self.chunks: list[int] = []
        self.dropped = 0  # expected content chunks (or words) that never arrived
        self.wrong_text = 0  # complete answers whose text is not the expected one
        self.ok = 0  # complete answers (HTTP 200 and a complete body or stream)
        self.failed = 0
        self.statuses: Counter[str] = Counter()
        self.samples: list[str] = []

    def wrong(self, expected: str, text: str, content: str | None = None) -> None:
        """A complete answer whose text is not the expected one: how it differs."""
        self.wrong_text += 1
        if len(self.samples) < 5:
            pairs = enumerate(zip(expected, text, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), None)
            at = min(len(expected), len(text)) if at is None else at
            self.samples.append(
                f"wrong text: {len(text)} of {len(expected)} characters, first difference at "
                f"{at}: {text[max(at - 20, 0) : at + 20]!r}"
                + (f"; the saved reply has {len(content)}" if content is not None else "")
            )

    def fail(self, what: str, detail: str = "") -> None:
        self.failed += 1
        self.statuses[what] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{what}: {detail[:300]}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "ttft": self.ttft,
            "chunks": self.chunks,
            "dropped": self.dropped,
            "wrong_text": self.wrong_text,
            "ok": self.ok,
            "failed": self.failed,
            "statuses": dict(self.statuses),
            "samples": self.samples,
        }


def _count_words(expected: str, text: str) -> int:
    """Expected words missing from ``text`` (the stream cut short, or words lost midway)."""
    return max(len(expected.split()) - len(text.split()), 0)


async def v1_request(http: Http, spec: dict[str, Any], tally: Tally) -> None:
    body: dict[str, Any] = {
        "model": spec["model"],
        "messages": [{"role": "user", "content": spec["prompt"]}],
    }
    if spec["stream"]:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": spec["auth"]}
    started = time.perf_counter()
    status = await http.start(spec["path"], json.dumps(body).encode(), headers)
    if status != 200:
        tally.fail(f"HTTP {status}", (await http.read()).decode(errors="replace"))
        return
    if not spec["stream"]:
        answer = json.loads(await http.read())
        tally.latency.append(time.perf_counter() - started)
        tally.ok += 1
        content = answer["choices"][0]["message"]["content"]
        if content != spec["expected"]:
            tally.wrong(spec["expected"], content or "")
        return
    # Every stream is read to its end (never left mid-body: the connection is kept alive).
    first = None
    parts: list[str] = []
    done = False
    error = None
    async for _, data in sse_events(http):
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            error = data
            continue
        choices = chunk.get("choices") or []
        content = choices[0].get("delta", {}).get("content") if choices else None
        if content:
            if first is None:
                first = time.perf_counter()
            parts.append(content)
    ended = time.perf_counter()
    if error is not None or not done:
        tally.fail("error event" if error else "stream without [DONE]", error or "".join(parts))
        return
    tally.ok += 1
    tally.latency.append(ended - started)
    if first is not None:
        tally.ttft.append(first - started)
    tally.chunks.append(len(parts))
    tally.dropped += max(spec["expected_chunks"] - len(parts), 0)
    if "".join(parts) != spec["expected"]:
        tally.wrong(spec["expected"], "".join(parts))


async def rest_request(http: Http, spec: dict[str, Any], conversation: int, tally: Tally) -> None:
    path = f"/api/v1/projects/{spec['project_id']}/conversations/{conversation}/messages/"
    # No "Accept: text/event-stream": the API answers it 406 (its renderers are JSON only).
    headers = {"Authorization": spec["auth"]}
    started = time.perf_counter()
    status = await http.start(
        path + "?stream=true", json.dumps({"content": spec["prompt"]}).encode(), headers
    )
    if status != 200:
        tally.fail(f"HTTP {status}", (await http.read()).decode(errors="replace"))
        return
    first = ended = None
    parts: list[str] = []
    last: tuple[str, str] | None = None
    async for name, data in sse_events(http):  # to the end: see v1_request
        if name == "delta":
            if first is None:
                first = time.perf_counter()
            parts.append(json.loads(data)["text"])
        elif name in ("done", "error"):
            ended = time.perf_counter()
            last = (name, data)
    if last is None or ended is None:
        tally.fail("stream without done", "".join(parts)[-100:])
        return
    if last[0] == "error":
        tally.fail("error event", last[1])
        return
    message = json.loads(last[1])["message"]
    tally.ok += 1
    tally.latency.append(ended - started)
    if first is not None:
        tally.ttft.append(first - started)
    tally.chunks.append(len(parts))
    text = "".join(parts)
    tally.dropped += _count_words(spec["expected"], text)
    tokens_ok = message.get("completion_tokens") == spec["expected_chunks"]
    if text != spec["expected"] or message.get("content") != text or not tokens_ok:
        tally.wrong(spec["expected"], text, message.get("content") or "")


async def run_http(spec: dict[str, Any], count: int, concurrency: int, tally: Tally) -> None:
    conversations = list(spec.get("conversations") or [])
    if spec["kind"] == "rest_stream" and len(conversations) < count:
        raise SystemExit("not enough conversations for the REST scenario")
    next_one = iter(range(count))

    async def worker() -> None:
        http = Http(spec["base"])
        try:
            for n in next_one:
                try:
                    async with asyncio.timeout(TIMEOUT):
                        if spec["kind"] == "rest_stream":
                            await rest_request(http, spec, conversations[n], tally)
                        else:
                            await v1_request(http, spec, tally)
                except (OSError, TimeoutError, ValueError, KeyError, IndexError) as exc:
                    http.close()
                    tally.fail(type(exc).__name__, str(exc))
        finally:
            http.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- web sockets -------------------------------------------------------------------------------


async def open_sockets(spec: dict[str, Any], conversations: list[int]) -> list[Any]:
    import websockets

    base = spec["base"]
    url = base.replace("http://", "ws://", 1)
    gate = asyncio.Semaphore(50)  # the server's listen backlog: connect 50 at a time

    async def one(conversation: int) -> Any:
        async with gate:
            return await websockets.connect(
                f"{url}/ws/conversations/{conversation}/",
                origin=base,  # type: ignore[arg-type]
                additional_headers={"Cookie": spec["cookie"]},
                max_size=None,
                ping_interval=None,
                open_timeout=120,
            )

    return list(await asyncio.gather(*(one(c) for c in conversations)))


async def ws_turn(socket: Any, spec: dict[str, Any], tally: Tally) -> None:
    started = time.perf_counter()
    await socket.send(json.dumps({"type": "message", "content": spec["prompt"]}))
    first = None
    parts: list[str] = []
    async with asyncio.timeout(WS_TIMEOUT):
        while True:
            event = json.loads(await socket.recv())
            kind = event["type"]
            if kind == "delta":
                if first is None:
                    first = time.perf_counter()
                parts.append(event["text"])
            elif kind == "error":
                tally.fail(f"error {event.get('code')}", json.dumps(event))
                return
            elif kind == "done":
                ended = time.perf_counter()
                message = event["message"]
                tally.ok += 1
                tally.latency.append(ended - started)
                if first is not None:
                    tally.ttft.append(first - started)
                tally.chunks.append(len(parts))
                text = "".join(parts)
                tally.dropped += _count_words(spec["expected"], text)
                tokens_ok = message.get("completion_tokens") == spec["expected_chunks"]
                if text != spec["expected"] or message.get("content") != text or not tokens_ok:
                    tally.wrong(spec["expected"], text, message.get("content") or "")
                return


async def run_ws_waves(
    spec: dict[str, Any], sockets: list[Any], concurrency: int, tally: Tally
) -> None:
    async def guarded(socket: Any) -> None:
        try:
            await ws_turn(socket, spec, tally)
        except (OSError, TimeoutError, ValueError, KeyError) as exc:
            tally.fail(type(exc).__name__, str(exc))
        except Exception as exc:  # websockets' ConnectionClosed and friends
            tally.fail(type(exc).__name__, str(exc))

    for at in range(0, len(sockets), concurrency):
        await asyncio.gather(*(guarded(s) for s in sockets[at : at + concurrency]))


# --- the run -----------------------------------------------------------------------------------


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    warm, measured = Tally(), Tally()
    pids = spec["pids"]
    if spec["kind"] == "ws":
        conversations, warm_conversations = spec["conversations"], spec["warm_conversations"]
        sockets = await open_sockets(spec, warm_conversations + conversations)
        try:
            await run_ws_waves(spec, sockets[: len(warm_conversations)], 1, warm)
            before = snapshot(pids)
            await run_ws_waves(
                spec, sockets[len(warm_conversations) :], spec["concurrency"], measured
            )
            after = snapshot(pids)
        finally:
            await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        count = len(conversations)
    else:
        warm_spec = dict(spec, conversations=spec.get("warm_conversations"))
        await run_http(warm_spec, spec["warmup"], spec["warmup_concurrency"], warm)
        before = snapshot(pids)
        count = spec["requests"]
        await run_http(spec, count, spec["concurrency"], measured)
        after = snapshot(pids)
    elapsed = after["at"] - before["at"]
    return {
        "requests": count,
        "elapsed": elapsed,
        "cpu": {k: after["cpu"][k] - before["cpu"][k] for k in pids},
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "client_cpu": after["client_cpu"] - before["client_cpu"],
        "warm": warm.as_dict(),
        "measured": measured.as_dict(),
    }


def main() -> None:
    spec = json.load(sys.stdin)
    result = asyncio.run(run(spec))
    print(RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
