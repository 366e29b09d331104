"""Local model speed: raw llama-cpp-python against the same model through `LocalProvider`.

Run from the project root:

    .venv/bin/python benchmarks/local_raw.py            # 5 measured runs per path
    .venv/bin/python benchmarks/local_raw.py --runs 10

Both paths load the bundled SmolLM2-135M-Instruct GGUF with the same settings (trained context,
every CPU as a thread), do one warm-up generation, then generate `MAX_TOKENS` tokens for `PROMPT`
greedily (temperature 0, fixed seed) `--runs` times. Reported per path:

- first token: median over the runs of the time from the call to the first non-empty content
  delta (queueing, prompt evaluation, the first sampled token and the hand-off);
- tokens/s: median over the runs of completion tokens / whole call (what a user sees);
- decode tok/s: 1 / the median gap between consecutive deltas over all runs: the per-token cost,
  where the provider's thread hand-off would show, and robust to the stalls other processes
  cause (with llama.cpp's threads on every core, anything else running makes single tokens
  take 10-100x longer; "max gap" shows how bad it got during the measurement).

After the warm-up, llama-cpp-python reuses the prompt from its KV cache, in both paths alike,
so "first token" is mostly one decoding step, as for a chat whose history is already cached.

Each path runs in its own fresh process, one after the other. Not for tidiness: llama.cpp is
built with OpenMP here, and once two live threads of one process have each run the model,
libgomp stops spinning in its barriers and both run about 3x slower (see local_provider.py).

The prompt constants are shared with the whole-app benchmarks next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.llm.base import ChatRequest, StreamEnd, TextDelta
from providers.llm.local_provider import (
    LOCAL_MODEL_NAME,
    LocalProvider,
    local_context_window,
    local_model_path,
)

PROMPT = "Write a short story about a lighthouse keeper."
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 256
TEMPERATURE = 0.0
SEED = 1
RUNS = 5


def benchmark_request() -> ChatRequest:
    """The request every local benchmark sends."""
    return ChatRequest(
        model=LOCAL_MODEL_NAME,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=TEMPERATURE,
        seed=SEED,
    )


@dataclass(frozen=True)
class Run:
    """One measured generation; times in seconds from the call."""

    tokens: int  # completion tokens: usage when the path reports it, else content deltas
    deltas: tuple[float, ...]  # arrival time of every non-empty content delta
    total: float

    @property
    def first_token(self) -> float:
        return self.deltas[0]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.total

    @property
    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.deltas)]


def raw_runs(runs: int) -> list[Run]:
    """`runs` measured generations straight through `Llama.create_chat_completion`."""
    from llama_cpp import Llama

    threads = os.cpu_count() or 1
    llama = Llama(
        str(local_model_path()),
        n_ctx=local_context_window(),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def once() -> Run:
        started = time.perf_counter()
        chunks = llama.create_chat_completion(
            messages=MESSAGES,
            stream=True,
            max_tokens=MAX_TOKENS,
            temperature=TEMPERATURE,
            seed=SEED,
        )
        deltas = [
            time.perf_counter() - started
            for chunk in chunks  # type: ignore[union-attr]
            if chunk["choices"][0]["delta"].get("content")
        ]
        total = time.perf_counter() - started
        # The raw stream carries no usage. llama-cpp-python emits one delta per token for
        # English text; the provider's "tokens" column (from its usage) shows that they agree.
        return Run(len(deltas), tuple(deltas), total)

    once()  # warm-up
    try:
        return [once() for _ in range(runs)]
    finally:
        llama.close()


async def provider_runs(runs: int) -> list[Run]:
    """`runs` measured generations through `LocalProvider.stream()` on an event loop."""
    provider = LocalProvider()
    request = benchmark_request()

    async def once() -> Run:
        started = time.perf_counter()
        deltas: list[float] = []
        end: StreamEnd | None = None
        async for event in provider.stream(request):
            if isinstance(event, TextDelta):
                deltas.append(time.perf_counter() - started)
            elif isinstance(event, StreamEnd):
                end = event
        total = time.perf_counter() - started
        tokens = end.usage.completion_tokens if end and end.usage else len(deltas)
        return Run(tokens, tuple(deltas), total)

    await once()  # warm-up, and the lazy model load
    try:
        return [await once() for _ in range(runs)]
    finally:
        await provider.aclose()


def provider_runs_sync(runs: int) -> list[Run]:
    return asyncio.run(provider_runs(runs))


def in_fresh_process(function: Callable[[int], list[Run]], runs: int) -> list[Run]:
    """`function(runs)` in a new interpreter, so no other llama.cpp thread shares libgomp."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, runs).result()


def summary_row(name: str, runs: list[Run]) -> list[str]:
    """Table cells for one path (see the module docstring for what each figure means)."""
    gaps = [gap for run in runs for gap in run.gaps]
    return [
        name,
        str(len(runs)),
        f"{statistics.median(run.tokens for run in runs):.0f}",
        f"{statistics.median(run.first_token for run in runs) * 1000:.0f}",
        f"{statistics.median(run.tokens_per_second for run in runs):.1f}",
        f"{1 / statistics.median(gaps):.1f}",
        f"{max(gaps) * 1000:.0f}",
    ]


def format_table(rows: list[list[str]]) -> str:
    header = ["path", "runs", "tokens", "first token ms", "tokens/s", "decode tok/s", "max gap ms"]
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="measured runs per path")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    raw = in_fresh_process(raw_runs, args.runs)
    provider = in_fresh_process(provider_runs_sync, args.runs)
    command = shlex.join([".venv/bin/python", "benchmarks/local_raw.py", *(argv or sys.argv[1:])])
    print(f"$ {command}")
    print(
        f"model {LOCAL_MODEL_NAME}, n_ctx {local_context_window()}, {os.cpu_count()} threads; "
        f"prompt {PROMPT!r}, max_tokens {MAX_TOKENS}, temperature {TEMPERATURE}, seed {SEED}; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        format_table(
            [summary_row("llama-cpp-python", raw), summary_row("LocalProvider.stream", provider)]
        )
    )


if __name__ == "__main__":
    main()
