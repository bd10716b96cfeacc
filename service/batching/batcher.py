"""Dynamic batching for one model: admission, batch formation, inference off the event loop.

Flow of a `score` call: admission (bounded by texts; all or nothing, else QueueFull with a
retry hint), tokenisation in a worker thread, its windows join the model's WindowQueue,
and the caller awaits a future. One worker coroutine cuts batches from the queue and runs
them in a ThreadPoolExecutor of `inference_threads`, so the event loop keeps accepting.

When a batch is dispatched (the policy, chosen for latency at concurrency 1 *and*
throughput under load):

- **Engine idle -> dispatch at once.** Waiting `max_queue_delay` with nothing running
  only adds latency: at concurrency 1 a text goes straight to the model. A call of at
  most `micro_batch_size` texts that finds the batcher idle (nothing queued, tokenising or
  running) skips the queue: it is tokenised and run in the same inference-thread job, one
  thread hop instead of two (on a busy 2-core host each hop costs up to a millisecond).
- **Engine busy -> work accumulates by itself.** Whatever arrives while a batch runs
  forms the next batch the moment an inference thread is free. Under load batches grow
  with the arrival rate and no timer is involved.
- **A free thread while another batch runs** (`inference_threads > 1`): dispatch if the
  queue already fills a batch, else wait until the oldest window has waited
  `max_queue_delay_ms`, so that a second thread does not run tiny batches that only
  compete with the first for the same cores.

A batch closes at `max_batch_tokens` (padded cost: longest window x count),
`max_batch_size` windows, or by the rule above. Windows are taken in arrival order (fair),
then sorted by length and cut into micro-batches of at most `micro_batch_tokens` padded
tokens, `micro_batch_size` windows and `micro_batch_padding` padding, one forward each
(`micro_limits` picks the defaults per model and device: small on a CPU, where attention
and padding eat the gain of large forwards, the batch limits on a GPU). Results are
delivered per micro-batch, so a request completes as soon as its last window has run, not
when the whole batch has.

Requests whose caller has gone (task cancelled) or whose deadline has passed are dropped
before inference: their queued windows are discarded and windows already in a batch are
skipped before each micro-batch (observer.dropped). An exception from the engine fails
exactly the requests with windows in that micro-batch; the worker carries on. `stop()`
refuses new work, finishes everything admitted, then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from wacht.service.batching.cost import WindowCost
from wacht.service.batching.queue import QueuedWindow, WindowQueue
from wacht.service.runtime import memory
from wacht.service.runtime.engine import EncodedText, Engine, TextScores, Truncation
from wacht.service.runtime.packing import micro_batches
from wacht.service.runtime.tokenize import window_starts

log = structlog.get_logger(__name__)
# A call is tokenised in chunks of about this many characters (or texts), each its own job
# in the tokeniser pool: other calls' jobs run between them.
TOKENIZE_CHUNK_CHARS = 64 * 1024
TOKENIZE_CHUNK_TEXTS = 64
# A whitespace-separated word with a letter or digit is one token or more: WordPiece and
# SentencePiece never join two words into one token.
_WORD = re.compile(r"\S*\w\S*")
TRIM_AFTER_WINDOWS = 512  # a call of this many windows returns freed memory to the system
TRIM_DELAY_S = 1.0  # that long after it completed (its answer sent, its buffers freed)


def _chunks(texts: list[str], max_chars: int, max_texts: int) -> list[list[str]]:
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for text in texts:
        if current and (size + len(text) > max_chars or len(current) >= max_texts):
            out.append(current)
            current, size = [], 0
        current.append(text)
        size += len(text)
    if current:
        out.append(current)
    return out


@dataclass
class BatchingConfig:
    max_batch_tokens: int = 4096
    max_batch_size: int = 64
    max_queue_delay_ms: float = 2.0
    max_queue_texts: int = 2048
    inference_threads: int = 0  # forwards at once; 0 = 1 here, the server resolves it
    # Per forward; 0 = chosen for the model (`micro_limits`). int8 (dynamic quantisation)
    # gives a text scores that depend on its neighbours in a forward (up to 0.15 apart, see
    # the model card) and is as fast one window per forward on a CPU: 1 window, so that its
    # scores never depend on other traffic. fp32 on one CPU core serves 1.1-1.2x the
    # texts/s with length-sorted forwards of up to 8 windows and 1024 padded tokens when
    # at most 20% of those are padding (more padding costs more than batching saves).
    # On a GPU: the batch limits.
    micro_batch_tokens: int = 0  # padded tokens per forward
    micro_batch_size: int = 0  # windows per forward
    micro_batch_padding: float = 0.2  # largest share of a forward's tokens that is padding
    tokenize_threads: int = 1
    # Admission by time: a call is refused (QueueFull, with the estimate as its retry hint)
    # when its estimated wait in the queue -- from the measured service rate and the work
    # ahead of it under fair queueing -- exceeds this bound, or when its estimated finish
    # is past its deadline. 0 = no bound (the deadline check stays). 500 ms: at 100 ms a
    # slower 2-core box refused six concurrent callers of four texts each (about 4 ms per
    # window there); callers who need less set a deadline, which is checked too.
    max_queue_wait_ms: float = 500.0
    # Overload, not a burst: once max_queue_wait_ms has been refusing calls for
    # standing_after_ms (no gap longer than that between refusals), the bound drops to
    # max_standing_wait_ms, the queued calls that would wait longer are refused too, and it
    # stays there until the batcher is next idle (nothing queued, being tokenised or
    # running). Under sustained overload the calls admitted are then served in about their
    # unloaded time plus this, instead of after max_queue_wait_ms each, and the excess is
    # refused at once (CoDel's standing queue, as in Facebook's "Fail at Scale"). Bursts
    # and concurrent callers that fit max_queue_wait_ms are not affected. 0 = off.
    max_standing_wait_ms: float = 50.0
    standing_after_ms: float = 30.0
    # Cost cap: windows one call may put into the queue (texts x windows per text);
    # more is refused with CallTooLarge. 0 = no cap.
    max_call_windows: int = 2048
    # Windows per dispatch at most, in micro-batches: 0 = 4 forwards' worth. Small keeps
    # the time a newly arrived call waits for a free inference thread short.
    dispatch_windows: int = 0


def micro_limits(config: BatchingConfig, engine: object) -> tuple[int, int, float]:
    """(padded tokens, windows, padding share) per forward for this engine; never above
    the batch limits (max_batch_size 1 = batching off)."""
    manifest = getattr(engine, "manifest", None)
    precision = getattr(manifest, "precision", "fp32")
    on_gpu = any(p != "CPUExecutionProvider" for p in getattr(engine, "providers", []))
    tokens, size = config.micro_batch_tokens, config.micro_batch_size
    if not size:
        size = 1 if precision == "int8" else config.max_batch_size if on_gpu else 8
    if not tokens:
        tokens = config.max_batch_tokens if on_gpu else 1024
    limits = min(tokens, config.max_batch_tokens), min(size, config.max_batch_size)
    return (*limits, config.micro_batch_padding)


class QueueFull(Exception):
    def __init__(self, retry_after_s: float, queued: int = 0, limit: int = 0) -> None:
        super().__init__(f"queue full ({queued}/{limit} texts); retry in {retry_after_s:.2f}s")
        self.retry_after_s = retry_after_s
        self.reason = "the batch queue is full"


class Overloaded(QueueFull):
    """The estimated wait is over the bound or past the call's deadline."""

    def __init__(self, retry_after_s: float, wait_s: float, allowed_s: float) -> None:
        Exception.__init__(
            self, f"estimated wait {wait_s:.3f}s > {allowed_s:.3f}s; retry in {retry_after_s:.2f}s"
        )
        self.retry_after_s = retry_after_s
        self.wait_s = wait_s
        self.reason = (
            f"the server is overloaded (estimated wait {wait_s * 1000:.0f} ms, "
            f"allowed {max(0.0, allowed_s) * 1000:.0f} ms)"
        )


class CallTooLarge(ValueError):
    """One call needs more windows than `max_call_windows`."""

    def __init__(self, windows: int, limit: int, texts: int) -> None:
        super().__init__(
            f"{texts} texts need {windows}+ windows of the model; at most {limit} per call "
            "(split the request, or shorten the texts)"
        )
        self.windows = windows
        self.limit = limit


class DeadlineExceeded(Exception):
    pass



def _caller_flow(caller: str) -> tuple[str, str] | None:
    """The queue flow a named caller's calls share; None: the call is its own flow."""
    return ("caller", caller) if caller else None

class BatcherClosed(Exception):
    """score() called before start() or after stop() began."""


@dataclass
class BatchTimings:
    queue_ns: int
    tokenize_ns: int
    inference_ns: int
    tokens: int


class BatchObserver(Protocol):
    def batch_done(
        self, size: int, tokens: int, padded_tokens: int, inference_s: float
    ) -> None: ...

    def queue_depth(self, texts: int) -> None: ...

    def batch_formed(self, windows: int) -> None: ...

    def dropped(self, reason: str, count: int) -> None: ...


class NullObserver:
    def batch_done(self, size: int, tokens: int, padded_tokens: int, inference_s: float) -> None:
        pass

    def queue_depth(self, texts: int) -> None:
        pass

    def batch_formed(self, windows: int) -> None:
        pass

    def dropped(self, reason: str, count: int) -> None:
        pass


@dataclass(eq=False)
class _Request:
    encoded: list[EncodedText]
    windows: list[list[int]]
    future: asyncio.Future
    deadline: float | None
    texts: int
    tokenize_ns: int
    enqueued_ns: int
    remaining: int  # windows queued and not yet delivered
    flow: object = None  # the queue flow (the caller's key, else the request itself)
    capacity: int = 0  # rows to allocate per output (an upper bound on its windows)
    tokenized: bool = True  # every chunk of its texts tokenised and queued
    live: bool = True  # read by inference threads; written on the loop only
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    started_ns: int = 0
    inference_ns: int = 0


class Batcher:
    def __init__(
        self,
        engine: Engine,
        config: BatchingConfig | None = None,
        observer: BatchObserver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config or BatchingConfig()
        self._micro = micro_limits(self.config, engine)
        self._dispatch_size = min(
            self.config.max_batch_size, self.config.dispatch_windows or 4 * self._micro[1]
        )
        self.observer: BatchObserver = observer or NullObserver()
        self._clock = clock
        self._queue = WindowQueue()
        self._queued_texts = 0  # admitted and not yet answered (tokenising, queued, running)
        self._in_flight = 0  # batches running
        # calls admitted and not yet fully tokenised, and their estimated windows and
        # tokens: they join the queue once the tokeniser has served them
        self._pending_calls = 0
        self._pending_windows = 0
        self._pending_tokens = 0.0
        self._rate = 0.0  # recent windows per second of inference (EWMA)
        self._cost = WindowCost()  # forward seconds per window, by its tokens (one thread)
        self._running_windows = 0  # windows in batches being run and not yet done
        self._overloaded = False  # under the standing bound until next idle
        self._refusing: tuple[float, float] | None = None  # (first, last) refusal by the bound
        self._running_tokens = 0
        # content tokens per window, and characters per window (learnt from multi-window
        # texts): they estimate a call's cost before it is tokenised; ~4 characters a token
        self._content = float(getattr(getattr(engine, "tokenizer", None), "content", 126))
        self._chars_per_window = 4 * self._content
        self._wake = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tokenize_pool: ThreadPoolExecutor | None = None

    @property
    def queue_texts(self) -> int:
        """Texts admitted and not yet answered (tokenising, queued or running): the number
        max_queue_texts bounds."""
        return self._queued_texts

    @property
    def queue_windows(self) -> int:
        """Windows waiting in the queue (tokenised, not yet taken into a batch)."""
        return len(self._queue)

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(
            max(1, self.config.inference_threads), thread_name_prefix="wacht-infer"
        )
        self._tokenize_pool = ThreadPoolExecutor(
            max(1, self.config.tokenize_threads), thread_name_prefix="wacht-tokenize"
        )
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="wacht-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish everything admitted, then release the threads."""
        if self._worker is None:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None
        for pool in (self._pool, self._tokenize_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._tokenize_pool = None

    async def score(
        self,
        texts: list[str],
        *,
        truncation: Truncation = "window",
        max_windows: int = 16,
        deadline: float | None = None,
        caller: str = "",
    ) -> tuple[list[TextScores], BatchTimings]:
        """Scores of `texts`. `caller`: the fair-queueing key; calls with the same non-empty
        key share one flow (served in turn with the other flows), "" = a flow per call."""
        if self._worker is None or self._closing or self._loop is None:
            raise BatcherClosed("the batcher is not running")
        count = len(texts)
        if count == 0:
            return [], BatchTimings(0, 0, 0, 0)
        if count > self.config.max_queue_texts:
            raise ValueError(
                f"{count} texts in one call; the queue holds at most {self.config.max_queue_texts}"
            )
        if deadline is not None and self._clock() >= deadline:
            self.observer.dropped("deadline", count)
            raise DeadlineExceeded("deadline passed before admission")
        if self._queued_texts + count > self.config.max_queue_texts:
            raise QueueFull(
                self._retry_after(count), self._queued_texts, self.config.max_queue_texts
            )
        windows, tokens = self.estimate(texts, truncation, max_windows)
        limit = self.config.max_call_windows
        if limit and windows > limit and self._tokenize_pool is not None:
            # likely over the cost cap: prove it from a cheap lower bound before tokenising
            at_least = await self._loop.run_in_executor(
                self._tokenize_pool, self.windows_at_least, texts, truncation, max_windows,
                limit,
            )
            if at_least > limit:
                raise CallTooLarge(at_least, limit, count)
        self.check_wait(windows, deadline, count, caller, tokens)
        self._admit(count)
        if self._idle() and count <= self._micro[1]:
            return await self._score_directly(
                list(texts), truncation, max_windows, deadline, int(tokens)
            )
        request = _Request(
            encoded=[],
            windows=[],
            future=self._loop.create_future(),
            deadline=deadline,
            texts=count,
            tokenize_ns=0,
            enqueued_ns=0,
            remaining=0,
            capacity=count * (1 if truncation == "head" else max_windows),
            tokenized=False,
        )
        request.flow = _caller_flow(caller) or request
        self._pending_calls += 1
        self._pending_windows += windows
        self._pending_tokens += tokens
        try:
            try:
                for chunk in _chunks(texts, TOKENIZE_CHUNK_CHARS, TOKENIZE_CHUNK_TEXTS):
                    if not request.live:
                        break  # expired or failed meanwhile: its future holds the error
                    await self._tokenize_chunk(request, chunk, truncation, max_windows)
            finally:
                self._pending_calls -= 1
                self._pending_windows -= windows
                self._pending_tokens -= tokens
            request.tokenized = True
            if request.live and request.remaining == 0:
                self._complete(request)  # every window was answered while we tokenised
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            return await asyncio.wait_for(request.future, timeout)
        except TimeoutError:
            if request.live:
                self._abandon(request, "deadline")
            raise DeadlineExceeded("deadline passed while queued or running") from None
        except asyncio.CancelledError:
            if request.live:
                self._abandon(request, "cancelled")
            raise
        except BaseException:
            if request.live:
                self._abandon(request, "failed")
            raise

    async def _tokenize_chunk(
        self, request: _Request, texts: list[str], truncation: Truncation, max_windows: int
    ) -> None:
        """Tokenise one chunk of a call's texts and queue its windows at once: a long call
        is tokenised in pieces that take turns with other calls in the tokeniser pool, and
        its first windows run while the rest is still being tokenised."""
        assert self._loop is not None
        started = time.perf_counter_ns()
        encoded = await self._loop.run_in_executor(
            self._tokenize_pool, self.engine.encode, texts, truncation, max_windows
        )
        now_ns = time.perf_counter_ns()
        request.tokenize_ns += now_ns - started
        if not request.enqueued_ns:
            request.enqueued_ns = now_ns
        if not request.live:
            return  # dropped (deadline) while this chunk was tokenised
        self._learn_sizes(texts, encoded)
        first = len(request.windows)
        windows = [w for e in encoded for w in e.windows]
        limit = self.config.max_call_windows
        if limit and first + len(windows) > limit:
            raise CallTooLarge(first + len(windows), limit, request.texts)
        request.encoded.extend(encoded)
        request.windows.extend(windows)
        request.remaining += len(windows)
        now = self._clock()
        self._queue.push(
            [QueuedWindow(request, first + i, len(w), now) for i, w in enumerate(windows)],
            request.flow,
        )
        self._wake.set()

    # --- admission by time ---

    def estimate(
        self, texts: list[str], truncation: Truncation = "window", max_windows: int = 16
    ) -> tuple[int, float]:
        """(windows, tokens) `texts` will need, from their lengths and the characters per
        window seen so far (windows exact for short texts: one each)."""
        content = self._content
        per_window = self._chars_per_window
        per_token = per_window / content
        windows, tokens = 0, 0.0
        for text in texts:
            n = 1 if truncation == "head" else min(max_windows, 1 + int(len(text) // per_window))
            windows += n
            tokens += n * (content + 2) if n > 1 else min(content, len(text) / per_token) + 2
        return windows, tokens

    def windows_at_least(
        self,
        texts: list[str],
        truncation: Truncation = "window",
        max_windows: int = 16,
        stop_above: int | None = None,
    ) -> int:
        """Windows `texts` need at the least (windows grow with tokens, and every word is
        a token or more): exact enough to refuse a call over the cost cap untokenised.
        With `stop_above`, counting stops once the total is over it."""
        tok = getattr(self.engine, "tokenizer", None)
        if truncation != "window" or tok is None:
            return len(texts)
        # this many tokens already make max_windows windows: no need to count further
        enough = tok.content + max(0, max_windows - 1) * tok.stride + 1
        total = 0
        for text in texts:
            words = sum(1 for _ in itertools.islice(_WORD.finditer(text), enough))
            total += len(window_starts(words, tok.content, tok.stride, max_windows))
            if stop_above is not None and total > stop_above:
                break  # proven over: the rest need not be counted
        return total

    def estimated_wait(
        self, windows: int = 1, caller: str = "", tokens: float | None = None, entering: int = 0
    ) -> float:
        """Seconds a new call of `windows` windows (`tokens` tokens; of `caller`'s flow, if
        named) would wait for the work ahead of it under round-robin (queued, being
        tokenised, the rest of what runs, and `entering` calls of a window each that are
        about to be admitted) at the measured cost per window and token."""
        if not self._cost.known:
            return 0.0
        if tokens is None:
            tokens = windows * self._cost.window_tokens
        queued = len(self._queue)
        ahead = self._queue.ahead_of(windows, _caller_flow(caller))
        n = ahead + self._running_windows + entering
        t = (ahead * self._queue.tokens / queued if queued else 0.0) + self._running_tokens
        t += entering * self._cost.window_tokens
        # calls still being tokenised join the queue first, each a flow of its own (at most
        # `windows` of each served before this call's last, as for the queued flows)
        if self._pending_calls:
            pending = min(self._pending_windows, self._pending_calls * max(1, windows))
            n += pending
            t += pending * self._pending_tokens / max(1, self._pending_windows)
        return self._cost.seconds(n, t) / max(1, self.config.inference_threads)

    def wait_bound(self) -> float:
        """Seconds a new call may wait: max_queue_wait_ms, or max_standing_wait_ms while
        overloaded (see BatchingConfig)."""
        bound = self.config.max_queue_wait_ms / 1000 or float("inf")
        if self._idle():
            self._overloaded, self._refusing = False, None
        elif self._overloaded:
            return min(bound, self.config.max_standing_wait_ms / 1000 or bound)
        return bound

    def service_time(self, windows: int, tokens: float | None = None) -> float:
        """Seconds this batcher needs for `windows` windows of one call on its own."""
        if tokens is None:
            tokens = windows * self._cost.window_tokens
        return self._cost.seconds(windows, tokens) / max(1, self.config.inference_threads)

    def check_wait(
        self,
        windows: int,
        deadline: float | None,
        texts: int = 0,
        caller: str = "",
        tokens: float | None = None,
        entering: int = 0,
    ) -> None:
        """Raise Overloaded when a call of `windows` windows would wait longer than the
        wait bound (max_queue_wait_ms, or max_standing_wait_ms while overloaded), or
        would not finish before its deadline (`entering`: see estimated_wait)."""
        bound = self.wait_bound()
        wait = self.estimated_wait(windows, caller, tokens, entering)
        if wait <= 0:
            return
        allowed = bound
        if deadline is not None:
            allowed = min(allowed, deadline - self._clock() - self.service_time(windows, tokens))
        if wait > allowed:
            if wait > bound and self.config.max_standing_wait_ms and not self._overloaded:
                self._refused_by_bound()
            # the backlog drains at the measured rate: after `wait - allowed` a call like
            # this one would fit again (if no one else came first)
            retry = min(60.0, max(0.005, wait - max(0.0, allowed)))
            if texts:
                self.observer.dropped("overloaded", texts)
            raise Overloaded(retry, wait, allowed)

    def _learn_sizes(self, texts: list[str], encoded: list[EncodedText]) -> None:
        long = [(len(t), len(e.windows)) for t, e in zip(texts, encoded, strict=True)
                if len(e.windows) > 1]
        if long:
            chars = sum(c for c, _ in long) / sum(w for _, w in long)
            self._chars_per_window = max(16.0, 0.8 * self._chars_per_window + 0.2 * chars)

    # --- the idle fast path: tokenise and infer in one thread hop ---

    def _idle(self) -> bool:
        return not (self._in_flight or self._pending_calls or len(self._queue) or self._closing)

    async def _score_directly(
        self,
        texts: list[str],
        truncation: Truncation,
        max_windows: int,
        deadline: float | None,
        tokens: int,
    ) -> tuple[list[TextScores], BatchTimings]:
        assert self._loop is not None
        self._in_flight += 1
        self._running_windows += len(texts)
        self._running_tokens += tokens
        future = self._loop.run_in_executor(
            self._pool, self._run_directly, texts, truncation, max_windows
        )
        future.add_done_callback(functools.partial(self._direct_finished, len(texts), tokens))
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            scores, timings, _ = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise DeadlineExceeded("deadline passed while running") from None
        return scores, timings

    def _run_directly(
        self, texts: list[str], truncation: Truncation, max_windows: int
    ) -> tuple[list[TextScores], BatchTimings, list[tuple[int, int, int, float]]]:
        """Runs in an inference thread when the engine was idle: no queue, one hop."""
        started = time.perf_counter_ns()
        encoded = self.engine.encode(texts, truncation, max_windows)
        tokenized = time.perf_counter_ns()
        windows = [w for e in encoded for w in e.windows]
        lengths = [len(w) for w in windows]
        rows: dict[str, np.ndarray] = {}
        stats = []
        for group in micro_batches(lengths, *self._micro):
            begin = time.perf_counter_ns()
            logits = self.engine.forward([windows[i] for i in group])
            elapsed = time.perf_counter_ns() - begin
            sizes = [lengths[i] for i in group]
            stats.append((len(group), sum(sizes), max(sizes) * len(group), elapsed / 1e9))
            for name, values in logits.items():
                if name not in rows:
                    rows[name] = np.empty((len(windows), values.shape[1]), dtype=np.float32)
                rows[name][group] = values
        scores = self.engine.scores_from_logits(encoded, rows)
        timings = BatchTimings(
            queue_ns=0,
            tokenize_ns=tokenized - started,
            inference_ns=int(sum(s[3] for s in stats) * 1e9),
            tokens=sum(e.tokens for e in encoded),
        )
        return scores, timings, stats

    def _direct_finished(self, count: int, tokens: int, future: asyncio.Future) -> None:
        self._in_flight -= 1
        self._running_windows -= count
        self._running_tokens -= tokens
        self._release(count)
        if future.cancelled() or future.exception() is not None:
            return  # the exception reached the caller (or nobody waits any more)
        for size, tokens, padded, seconds in future.result()[2]:
            self._batch_stats(size, tokens, padded, seconds)

    # --- admission bookkeeping (event loop only) ---

    def _admit(self, count: int) -> None:
        self._queued_texts += count
        self.observer.queue_depth(self._queued_texts)

    def _release(self, count: int) -> None:
        self._queued_texts -= count
        self.observer.queue_depth(self._queued_texts)
        self._wake.set()

    def _retry_after(self, count: int) -> float:
        excess = self._queued_texts + count - self.config.max_queue_texts
        if self._rate <= 0:
            return 1.0
        rate = self._rate * max(1, self.config.inference_threads)  # windows/s ~ texts/s
        return float(min(60.0, max(0.01, excess / rate)))

    def _finish(self, request: _Request, *, purge: bool = False) -> None:
        request.live = False
        if purge:  # otherwise its queued windows are skipped lazily by take()
            self._queue.discard(request, request.flow)
        self._release(request.texts)

    def _refused_by_bound(self) -> None:
        """max_queue_wait_ms refused a call: past standing_after_ms of such refusals the
        batcher is overloaded."""
        now, after = self._clock(), self.config.standing_after_ms / 1000
        first, last = self._refusing or (now, now)
        if now - last > after:
            first = now  # a gap: this is a new run of refusals
        self._refusing = (first, now)
        if now - first >= after:
            self._overloaded, self._refusing = True, None
            self._refuse_queued(self.wait_bound())

    def _refuse_queued(self, bound: float) -> None:
        """On overload: refuse the queued calls (none of their windows started) that would
        still wait longer than `bound`, so that the calls kept are served within it."""
        threads = max(1, self.config.inference_threads)
        fixed, per_token = self._cost.line()
        waited = self._cost.seconds(self._running_windows, self._running_tokens) / threads
        queued: dict[_Request, int] = {}
        late: dict[_Request, float] = {}
        for item in self._queue:  # in the order they would be served
            request = item.request
            queued[request] = queued.get(request, 0) + 1
            if waited > bound and request not in late:
                late[request] = waited
            waited += (fixed + per_token * item.length) / threads
        for request, wait in late.items():
            if not request.live or not request.tokenized or queued[request] < request.remaining:
                continue  # still being tokenised, or partly served: let it finish
            self._finish(request, purge=True)
            if not request.future.done():
                request.future.set_exception(Overloaded(wait - bound, wait, bound))
            self.observer.dropped("overloaded", request.texts)

    def _abandon(self, request: _Request, reason: str) -> None:
        """The caller is gone (cancelled, or its deadline passed while it waited)."""
        self._finish(request, purge=True)
        if not request.future.done():
            request.future.cancel()
        self.observer.dropped(reason, request.texts)

    def _expire(self, request: _Request, purge: bool = True) -> None:
        """The batcher found the deadline passed before inference; the caller still waits."""
        if not request.live:
            return
        self._finish(request, purge=purge)
        if not request.future.done():
            request.future.set_exception(DeadlineExceeded("deadline passed before inference"))
        self.observer.dropped("deadline", request.texts)

    def _keep(self, item: QueuedWindow) -> bool:
        request: _Request = item.request
        if not request.live:
            return False
        if request.deadline is not None and self._clock() >= request.deadline:
            self._expire(request, purge=False)  # we are inside take(): no purge here
            return False
        return True

    # --- the worker ---

    def _should_dispatch(self) -> float | None:
        """0 to dispatch now, seconds to wait for more work, None when nothing can run."""
        if not len(self._queue) or self._in_flight >= max(1, self.config.inference_threads):
            return None
        if self._in_flight == 0 or self._closing:
            return 0.0
        cfg = self.config
        if self._queue.batch_ready(cfg.max_batch_tokens, self._dispatch_size):
            return 0.0
        oldest = self._queue.oldest or self._clock()
        return max(0.0, oldest + cfg.max_queue_delay_ms / 1000 - self._clock())

    async def _run(self) -> None:
        while not (self._closing and self._queued_texts == 0 and self._in_flight == 0):
            try:
                wait = self._should_dispatch()
                if wait is None or wait > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
                self._dispatch()
            except Exception:  # the worker must outlive any bug in one batch
                log.exception("batcher_worker_error")
                await asyncio.sleep(0.01)

    def _dispatch(self) -> None:
        cfg = self.config
        batch = self._queue.take(cfg.max_batch_tokens, self._dispatch_size, self._keep)
        if not batch:
            return
        self.observer.batch_formed(len(batch))
        assert self._loop is not None
        self._in_flight += 1
        left = [len(batch), sum(item.length for item in batch)]  # not yet run: windows, tokens
        self._running_windows += left[0]
        self._running_tokens += left[1]
        future = self._loop.run_in_executor(self._pool, self._infer, batch, left)
        future.add_done_callback(functools.partial(self._batch_finished, batch, left))

    def _ran(self, left: list[int], windows: int, tokens: int) -> None:
        """Part of a running batch is done (or skipped): the estimate stops counting it."""
        windows, tokens = min(windows, left[0]), min(tokens, left[1])
        left[0] -= windows
        left[1] -= tokens
        self._running_windows -= windows
        self._running_tokens -= tokens

    def _batch_finished(
        self, batch: list[QueuedWindow], left: list[int], future: asyncio.Future
    ) -> None:
        self._in_flight -= 1
        self._ran(left, left[0], left[1])
        self._wake.set()
        exc = future.exception()
        if exc is not None:
            log.error("batch_failed", error=repr(exc))
            self._fail(batch, exc)

    def _infer(self, batch: list[QueuedWindow], left: list[int]) -> None:
        """Runs in an inference thread: micro-batches in length order, results posted back."""
        assert self._loop is not None
        groups = micro_batches([item.length for item in batch], *self._micro)
        for group in groups:
            done = functools.partial(
                self._ran, left, len(group), sum(batch[i].length for i in group)
            )
            self._infer_group([batch[i] for i in group], done)

    def _infer_group(self, group: list[QueuedWindow], done: Callable[[], None]) -> None:
        """One forward; exactly one callback per outcome tells the loop the group is done
        (with the results, on success: one loop hop per forward)."""
        assert self._loop is not None
        items = [item for item in group if item.request.live]
        now = self._clock()
        expired = {
            item.request
            for item in items
            if item.request.deadline is not None and now >= item.request.deadline
        }
        if expired:
            for request in expired:
                self._loop.call_soon_threadsafe(self._expire, request)
            items = [item for item in items if item.request not in expired]
        if not items:
            self._loop.call_soon_threadsafe(done)
            return
        windows = [item.request.windows[item.index] for item in items]
        started = time.perf_counter_ns()
        try:
            logits = self.engine.forward(windows)
        except Exception as exc:
            self._loop.call_soon_threadsafe(self._fail, items, exc)
            self._loop.call_soon_threadsafe(done)
            return
        elapsed = time.perf_counter_ns() - started
        self._loop.call_soon_threadsafe(self._deliver, items, logits, started, elapsed, done)

    def _deliver(
        self,
        items: list[QueuedWindow],
        logits: dict[str, np.ndarray],
        started: int,
        elapsed: int,
        done: Callable[[], None],
    ) -> None:
        done()
        lengths = [item.length for item in items]
        self._batch_stats(len(items), sum(lengths), max(lengths) * len(items), elapsed / 1e9)
        touched: dict[_Request, None] = {}
        for row, item in enumerate(items):
            request: _Request = item.request
            if not request.live:
                continue
            for name, values in logits.items():
                if name not in request.rows:
                    rows = max(request.capacity, len(request.windows))
                    request.rows[name] = np.empty((rows, values.shape[1]), dtype=np.float32)
                request.rows[name][item.index] = values[row]
            request.remaining -= 1
            touched[request] = None
        for request in touched:
            request.inference_ns += elapsed
            if not request.started_ns:
                request.started_ns = started
            if request.remaining == 0 and request.tokenized:
                self._complete(request)

    def _batch_stats(self, size: int, tokens: int, padded: int, seconds: float) -> None:
        self.observer.batch_done(size, tokens, padded, seconds)
        if seconds > 0 and size > 0:
            rate = size / seconds
            self._rate = rate if self._rate <= 0 else 0.8 * self._rate + 0.2 * rate
        self._cost.observe(size, padded, seconds)

    def _complete(self, request: _Request) -> None:
        self._finish(request)
        if len(request.windows) >= TRIM_AFTER_WINDOWS and self._loop is not None:
            # after a large call, once its answer is sent and its buffers are freed
            self._loop.call_later(TRIM_DELAY_S, self._trim)
        if request.future.done():
            return
        try:
            count = len(request.windows)
            rows = {name: values[:count] for name, values in request.rows.items()}
            scores = self.engine.scores_from_logits(request.encoded, rows)
        except Exception as exc:
            request.future.set_exception(exc)
            return
        timings = BatchTimings(
            queue_ns=max(0, request.started_ns - request.enqueued_ns),
            tokenize_ns=request.tokenize_ns,
            inference_ns=request.inference_ns,
            tokens=sum(e.tokens for e in request.encoded),
        )
        request.future.set_result((scores, timings))

    def _trim(self) -> None:
        if self._tokenize_pool is not None and not self._closing:
            self._tokenize_pool.submit(memory.trim, True)

    def _fail(self, items: list[QueuedWindow], exc: BaseException) -> None:
        for request in {item.request: None for item in items}:
            if not request.live:
                continue
            self._finish(request, purge=True)
            if not request.future.done():
                request.future.set_exception(exc)
