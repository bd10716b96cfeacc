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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from wacht.service.batching.queue import QueuedWindow, WindowQueue
from wacht.service.runtime.engine import EncodedText, Engine, TextScores, Truncation
from wacht.service.runtime.packing import micro_batches

log = structlog.get_logger(__name__)


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


class DeadlineExceeded(Exception):
    pass


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
    remaining: int
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
        self.observer: BatchObserver = observer or NullObserver()
        self._clock = clock
        self._queue = WindowQueue()
        self._queued_texts = 0  # admitted and not yet answered (tokenising, queued, running)
        self._in_flight = 0  # batches running
        self._tokenizing = 0  # calls being tokenised
        self._rate = 0.0  # recent windows per second of inference (EWMA)
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
    ) -> tuple[list[TextScores], BatchTimings]:
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
        self._admit(count)
        if self._idle() and count <= self._micro[1]:
            return await self._score_directly(list(texts), truncation, max_windows, deadline)
        request: _Request | None = None
        try:
            started = time.perf_counter_ns()
            self._tokenizing += 1
            try:
                encoded = await self._loop.run_in_executor(
                    self._tokenize_pool, self.engine.encode, list(texts), truncation, max_windows
                )
            finally:
                self._tokenizing -= 1
            enqueued = time.perf_counter_ns()
            windows = [w for e in encoded for w in e.windows]
            request = _Request(
                encoded=encoded,
                windows=windows,
                future=self._loop.create_future(),
                deadline=deadline,
                texts=count,
                tokenize_ns=enqueued - started,
                enqueued_ns=enqueued,
                remaining=len(windows),
            )
            now = self._clock()
            self._queue.push([QueuedWindow(request, i, len(w), now) for i, w in enumerate(windows)])
            self._wake.set()
            timeout = None if deadline is None else max(0.0, deadline - now)
            return await asyncio.wait_for(request.future, timeout)
        except TimeoutError:
            if request is not None and request.live:
                self._abandon(request, "deadline")
            raise DeadlineExceeded("deadline passed while queued or running") from None
        except asyncio.CancelledError:
            if request is None:
                self._release(count)
                self.observer.dropped("cancelled", count)
            elif request.live:
                self._abandon(request, "cancelled")
            raise
        except BaseException:
            if request is None:
                self._release(count)
            raise

    # --- the idle fast path: tokenise and infer in one thread hop ---

    def _idle(self) -> bool:
        return not (self._in_flight or self._tokenizing or len(self._queue) or self._closing)

    async def _score_directly(
        self, texts: list[str], truncation: Truncation, max_windows: int, deadline: float | None
    ) -> tuple[list[TextScores], BatchTimings]:
        assert self._loop is not None
        self._in_flight += 1
        future = self._loop.run_in_executor(
            self._pool, self._run_directly, texts, truncation, max_windows
        )
        future.add_done_callback(functools.partial(self._direct_finished, len(texts)))
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

    def _direct_finished(self, count: int, future: asyncio.Future) -> None:
        self._in_flight -= 1
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
        return float(min(60.0, max(0.01, excess / self._rate)))

    def _finish(self, request: _Request, *, purge: bool = False) -> None:
        request.live = False
        if purge:  # otherwise its queued windows are skipped lazily by take()
            self._queue.discard(request)
        self._release(request.texts)

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
        if self._queue.batch_ready(cfg.max_batch_tokens, cfg.max_batch_size):
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
        batch = self._queue.take(cfg.max_batch_tokens, cfg.max_batch_size, self._keep)
        if not batch:
            return
        self.observer.batch_formed(len(batch))
        assert self._loop is not None
        self._in_flight += 1
        future = self._loop.run_in_executor(self._pool, self._infer, batch)
        future.add_done_callback(functools.partial(self._batch_finished, batch))

    def _batch_finished(self, batch: list[QueuedWindow], future: asyncio.Future) -> None:
        self._in_flight -= 1
        self._wake.set()
        exc = future.exception()
        if exc is not None:
            log.error("batch_failed", error=repr(exc))
            self._fail(batch, exc)

    def _infer(self, batch: list[QueuedWindow]) -> None:
        """Runs in an inference thread: micro-batches in length order, results posted back."""
        assert self._loop is not None
        groups = micro_batches([item.length for item in batch], *self._micro)
        for group in groups:
            items = [batch[i] for i in group if batch[i].request.live]
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
                continue
            windows = [item.request.windows[item.index] for item in items]
            started = time.perf_counter_ns()
            try:
                logits = self.engine.forward(windows)
            except Exception as exc:
                self._loop.call_soon_threadsafe(self._fail, items, exc)
                continue
            elapsed = time.perf_counter_ns() - started
            self._loop.call_soon_threadsafe(self._deliver, items, logits, started, elapsed)

    def _deliver(
        self, items: list[QueuedWindow], logits: dict[str, np.ndarray], started: int, elapsed: int
    ) -> None:
        lengths = [item.length for item in items]
        self._batch_stats(len(items), sum(lengths), max(lengths) * len(items), elapsed / 1e9)
        touched: dict[_Request, None] = {}
        for row, item in enumerate(items):
            request: _Request = item.request
            if not request.live:
                continue
            for name, values in logits.items():
                if name not in request.rows:
                    request.rows[name] = np.empty(
                        (len(request.windows), values.shape[1]), dtype=np.float32
                    )
                request.rows[name][item.index] = values[row]
            request.remaining -= 1
            touched[request] = None
        for request in touched:
            request.inference_ns += elapsed
            if not request.started_ns:
                request.started_ns = started
            if request.remaining == 0:
                self._complete(request)

    def _batch_stats(self, size: int, tokens: int, padded: int, seconds: float) -> None:
        self.observer.batch_done(size, tokens, padded, seconds)
        if seconds > 0:
            rate = size / seconds
            self._rate = rate if self._rate <= 0 else 0.8 * self._rate + 0.2 * rate

    def _complete(self, request: _Request) -> None:
        self._finish(request)
        if request.future.done():
            return
        try:
            scores = self.engine.scores_from_logits(request.encoded, request.rows)
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

    def _fail(self, items: list[QueuedWindow], exc: BaseException) -> None:
        for request in {item.request: None for item in items}:
            if not request.live:
                continue
            self._finish(request, purge=True)
            if not request.future.done():
                request.future.set_exception(exc)
