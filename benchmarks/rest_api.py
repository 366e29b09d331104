"""Local model speed through the REST API and the OpenAI-compatible endpoint, against a running
server. The counterpart of `benchmarks/app_ws.py` (the web chat's path) for REST consumers.

Start the app (`make run`), then from the project root:

    .venv/bin/python benchmarks/rest_api.py                 # 5 measured runs per path
    .venv/bin/python benchmarks/rest_api.py --runs 10 --base http://127.0.0.1:8000

It logs in as the demo user, creates a project API key through the REST API (and revokes it at
the end), and sends the same prompt, token cap and temperature as `benchmarks/local_raw.py`:

- REST: ``POST /api/v1/projects/<id>/conversations/<id>/messages/?stream=true`` in a fresh
  conversation each run (so the prompt is the same every time), read as Server-Sent Events;
- /v1: ``client.chat.completions.create(stream=True)`` with the official ``openai`` SDK.

One warm-up each, then ``--runs`` measured: first token (request sent → first delta) and
tokens/s (the model's completion tokens / whole request), medians. Compare with local_raw.py's
"tokens/s", run right before or after on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import openai
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.app_ws import LOCAL_MODEL, log_in
from benchmarks.local_raw import MAX_TOKENS, PROMPT, RUNS, SEED, TEMPERATURE


def create_key(session: requests.Session, base: str) -> tuple[int, int, str]:
    """(project id, key id, key) of a new key of the demo user's first project."""
    project = session.get(f"{base}/api/v1/projects/", timeout=10).json()["results"][0]["id"]
    response = session.post(
        f"{base}/api/v1/projects/{project}/keys/",
        json={"name": "benchmark", "scopes": ["chat", "read"]},
        headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{base}/"},
        timeout=10,
    )
    response.raise_for_status()
    return project, response.json()["id"], response.json()["key"]


def rest_turn(base: str, project: int, key: str) -> dict:
    auth = {"Authorization": f"Bearer {key}"}
    conversation = requests.post(
        f"{base}/api/v1/projects/{project}/conversations/",
        # A title up front: the titling task would otherwise run beside the benchmark.
        json={
            "model": LOCAL_MODEL,
            "system_prompt": "",
            "temperature": TEMPERATURE,
            "max_tokens": MAX_TOKENS,
            "title": "Benchmark",
        },
        headers=auth,
        timeout=10,
    ).json()
    url = f"{base}/api/v1/projects/{project}/conversations/{conversation['id']}/messages/"
    started = time.perf_counter()
    first = None
    with requests.post(
        url + "?stream=true", json={"content": PROMPT}, headers=auth, stream=True, timeout=120
    ) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith(b"event: "):
                event = line[7:].decode()
            elif line.startswith(b"data: ") and event == "delta" and first is None:
                first = time.perf_counter()
            elif line.startswith(b"data: ") and event in ("done", "error"):
                ended = time.perf_counter()
                data = json.loads(line[6:])
                if event == "error":
                    raise SystemExit(f"The app answered an error: {data}")
                tokens = data["message"]["completion_tokens"]
                return {"first": first - started, "tps": tokens / (ended - started), "n": tokens}
    raise SystemExit("The stream ended without done")


def v1_turn(client: openai.OpenAI) -> dict:
    started = time.perf_counter()
    first = None
    usage = None
    for chunk in client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        temperature=TEMPERATURE,
        seed=SEED,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    ended = time.perf_counter()
    return {
        "first": first - started,
        "tps": usage.completion_tokens / (ended - started),
        "n": usage.completion_tokens,
    }


def report(name: str, results: list[dict]) -> None:
    print(f"{name}: {len(results)} runs, {results[0]['n']} tokens each")
    print(f"  first token  {statistics.median(r['first'] for r in results) * 1000:8.1f} ms")
    print(f"  tokens/s     {statistics.median(r['tps'] for r in results):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--email", default="demo@example.com")
    parser.add_argument("--password", default="demo-password")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()

    session = log_in(args.base, args.email, args.password)
    project, key_id, key = create_key(session, args.base)
    try:
        rest_turn(args.base, project, key)  # warm-up
        report(
            "REST API, ?stream=true", [rest_turn(args.base, project, key) for _ in range(args.runs)]
        )
        client = openai.OpenAI(base_url=f"{args.base}/v1", api_key=key, max_retries=0, timeout=120)
        v1_turn(client)  # warm-up
        report("/v1/chat/completions, stream", [v1_turn(client) for _ in range(args.runs)])
    finally:
        session.post(
            f"{args.base}/api/v1/projects/{project}/keys/{key_id}/revoke/",
            headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{args.base}/"},
            timeout=10,
        )


if __name__ == "__main__":
    main()
