"""Local model speed through the whole app: a WebSocket client against a running server.

Start the app (`make run`), then from the project root:

    .venv/bin/python benchmarks/app_ws.py                 # 5 measured runs
    .venv/bin/python benchmarks/app_ws.py --runs 10 --base http://127.0.0.1:8000

It logs in as the demo user, creates a conversation on the built-in local model with the same
prompt, token cap, temperature and seed as `benchmarks/local_raw.py`, and sends the prompt over
`/ws/conversations/<id>/` as the chat page does: the path a user's reply takes (consumer,
service, reply task, provider, worker thread, channel layer, socket). One warm-up turn, then
``--runs`` regenerations of it, each measured from sending the frame to its ``done`` event:

- first token: median time from the frame to the first ``delta``;
- tokens/s: median of completion tokens (the model's own count, from ``done``) / whole turn,
  comparable with local_raw.py's "tokens/s";
- frames: median number of ``delta`` frames per reply (tokens closer together than
  CHAT_DELTA_INTERVAL share a frame).

Compare with `benchmarks/local_raw.py` run right before or after, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.local_raw import MAX_TOKENS, PROMPT, RUNS, TEMPERATURE

LOCAL_MODEL = "smollm2-135m-instruct"


def log_in(base: str, email: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(
        f"{base}/login/",
        data={"csrfmiddlewaretoken": token, "username": email, "password": password},
        headers={"Referer": f"{base}/login/"},
        timeout=10,
    )
    response.raise_for_status()
    if "sessionid" not in session.cookies:
        raise SystemExit("Log-in failed: is `make run` up, with the demo user?")
    return session


def post_form(session: requests.Session, base: str, url: str, data: dict) -> requests.Response:
    token = session.cookies["csrftoken"]
    return session.post(
        base + url,
        data={"csrfmiddlewaretoken": token, **data},
        headers={"Referer": base + url},
        timeout=30,
    )


def new_conversation(session: requests.Session, base: str, project: str) -> int:
    response = post_form(session, base, f"{project}chat/new/", {"model": LOCAL_MODEL})
    conversation_id = int(re.search(r"/chat/(\d+)/", response.url).group(1))
    prefix = f"{project}chat/{conversation_id}/"
    settings = {"model": LOCAL_MODEL, "system_prompt": "", "temperature": str(TEMPERATURE),
                "max_tokens": str(MAX_TOKENS)}  # fmt: skip
    post_form(session, base, prefix + "settings/", settings).raise_for_status()
    # A title up front: the titling task would otherwise run the model beside the benchmark.
    post_form(session, base, prefix + "rename/", {"title": "Benchmark"}).raise_for_status()
    return conversation_id


async def turn(socket, frame: dict) -> dict:
    """Send one frame; time its reply from the frame to ``done``."""
    started = time.perf_counter()
    await socket.send(json.dumps(frame))
    delta_times: list[float] = []
    while True:
        event = json.loads(await socket.recv())
        if event["type"] == "delta":
            delta_times.append(time.perf_counter())
        elif event["type"] == "error":
            raise SystemExit(f"The app answered an error: {event}")
        elif event["type"] == "done":
            ended = time.perf_counter()
            tokens = event["message"]["completion_tokens"]
            return {
                "first": delta_times[0] - started,
                "tps": tokens / (ended - started),
                "frames": len(delta_times),
                "tokens": tokens,
            }


async def measure(base: str, session: requests.Session, conversation_id: int, runs: int) -> list:
    host = urlsplit(base).netloc
    scheme = "wss" if base.startswith("https") else "ws"
    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    async with websockets.connect(
        f"{scheme}://{host}/ws/conversations/{conversation_id}/",
        origin=base,
        additional_headers={"Cookie": cookie},
        max_size=None,
    ) as socket:
        await turn(socket, {"type": "message", "content": PROMPT})  # warm-up
        return [await turn(socket, {"type": "regenerate"}) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--email", default="demo@example.com")
    parser.add_argument("--password", default="demo-password")
    parser.add_argument("--project", default="/orgs/demo/projects/demo-project/")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()

    session = log_in(args.base, args.email, args.password)
    conversation_id = new_conversation(session, args.base, args.project)
    results = asyncio.run(measure(args.base, session, conversation_id, args.runs))
    print(f"whole app over WebSocket ({args.base}), {args.runs} runs, "
          f"{results[0]['tokens']} tokens each")  # fmt: skip
    print(f"  first token  {statistics.median(r['first'] for r in results) * 1000:8.1f} ms")
    print(f"  tokens/s     {statistics.median(r['tps'] for r in results):8.1f}")
    print(f"  frames       {statistics.median(r['frames'] for r in results):8.0f}")


if __name__ == "__main__":
    main()
