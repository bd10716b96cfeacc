"""The generation queue: explanations run on their own threads, capped, never in the
classification pool, so a busy generator cannot starve `Moderate`.

Admission: at most `max_concurrent` generations run (one thread each) and at most
`max_waiting` wait for a thread; one more is refused with QueueFull (retry hint from the
measured speed). Each stream's text deltas reach the async consumer through an asyncio
queue. Generation stops at the next token when the consumer goes away (aclose, task
cancelled) or the deadline (time.monotonic()) passes; a deadline that passes before the
reply is complete raises DeadlineExceeded after the deltas already produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from wacht.service.batching.batcher import DeadlineExceeded, QueueFull
from wacht.service.runtime.generator import GenerationStats

__all__ = ["DeadlineExceeded", "GenerationQueue", "QueueClosed", "QueueFull", "StreamingGenerator"]

_DONE = object()


class QueueClosed(RuntimeError):
    """The queue was closed (server shutting down) before or while this stream ran."""


class StreamingGenerator(Protocol):
    """What the queue needs of service.runtime.generator.Generator."""

    name: str

    def stream(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] | None = None,
        *,
        seed: int | None = None,
        stats: GenerationStats | None = None,
    ) -> Iterator[str]: ...


@dataclass(eq=False)
class _Job:
    deadline: float | None
    gone: bool = False  # consumer went away; read by the worker thread
    closing: bool = False  # the queue is closing
    started: bool = False
    expired: bool = False  # the deadline stopped it

    def should_stop(self) -> bool:
        if self.gone or self.closing:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.expired = True
            return True
        return False


class GenerationQueue:
    def __init__(
        self,
        generator: StreamingGenerator,
        max_concurrent: int = 1,
        max_waiting: int = 8,
        *,
        smoothing: float = 0.3,
    ) -> None:
        if max_concurrent < 1 or max_waiting < 0:
            raise ValueError("max_concurrent must be >= 1 and max_waiting >= 0")
        self.generator = generator
        self.name = generator.name
        self.languages: tuple[str, ...] = getattr(
            getattr(generator, "manifest", None), "languages", ("en",)
        )
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self._smoothing = smoothing
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="wacht-generate")
        self._lock = threading.Lock()
        self._active = 0
        self._waiting = 0
        self._tokens_per_s = 0.0  # decode, moving average; 0 until measured
        self._prefill_tokens_per_s = 0.0
        self._mean_new_tokens = 0.0
        self._jobs: set[_Job] = set()
        self._closed = False
        self.completed = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def tokens_per_second(self) -> float:
        """Decode speed of recent generations (moving average); 0.0 before the first."""
        return self._tokens_per_s

    @property
    def prefill_tokens_per_second(self) -> float:
        return self._prefill_tokens_per_s

    def estimate_seconds(self, new_tokens: int, prompt_tokens: int = 0) -> float | None:
        """Time one generation is expected to take once it runs; None before any measurement."""
        if self._tokens_per_s <= 0:
            return None
        prefill = prompt_tokens / self._prefill_tokens_per_s if self._prefill_tokens_per_s else 0
        return prefill + new_tokens / self._tokens_per_s

    def _retry_after(self) -> float:
        per_job = self.estimate_seconds(int(self._mean_new_tokens) or 64) or 2.0
        return float(min(60.0, max(0.1, per_job * (self._waiting + 1) / self.max_concurrent)))

    def _admit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise QueueClosed("the generation queue is closed")
            if self._active + self._waiting >= self.max_concurrent + self.max_waiting:
                raise QueueFull(
                    self._retry_after(),
                    self._active + self._waiting,
                    self.max_concurrent + self.max_waiting,
                )
            self._waiting += 1
            self._jobs.add(job)

    def _observe(self, stats: GenerationStats) -> None:
        a = self._smoothing
        with self._lock:
            if stats.decode_steps and stats.decode_s > 0:
                rate = stats.decode_steps / stats.decode_s
                self._tokens_per_s = (
                    rate if not self._tokens_per_s else (a * rate + (1 - a) * self._tokens_per_s)
                )
                self._mean_new_tokens = (
                    stats.new_tokens
                    if not self._mean_new_tokens
                    else a * stats.new_tokens + (1 - a) * self._mean_new_tokens
                )
            if stats.prompt_tokens and stats.prefill_s > 0:
                rate = stats.prompt_tokens / stats.prefill_s
                self._prefill_tokens_per_s = (
                    rate
                    if not self._prefill_tokens_per_s
                    else (a * rate + (1 - a) * self._prefill_tokens_per_s)
                )

    def _run(
        self,
        job: _Job,
        messages: list[dict[str, str]],
        max_new_tokens: int,
        temperature: float,
        emit: Callable[[object], None],
    ) -> None:
        with self._lock:
            if job.gone:  # left while waiting; already uncounted
                return
            self._waiting -= 1
            self._active += 1
            job.started = True
        stats = GenerationStats()
        last: object = _DONE
        try:
            if not job.should_stop():
                for delta in self.generator.stream(
                    messages, max_new_tokens, temperature, job.should_stop, stats=stats
                ):
                    if job.gone:
                        break
                    emit(delta)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            last = exc
        finally:
            if stats.stop_reason in ("eos", "max_new_tokens"):
                self._observe(stats)
            with self._lock:
                self._active -= 1
                self.completed += 1
            emit(last)  # after the counts: a consumer that has its end sees them settled

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 96,
        deadline: float | None = None,
        temperature: float = 0.0,
    ) -> AsyncIterator[str]:
        """Text deltas of the reply. Raises QueueFull (admission), DeadlineExceeded."""
        job = _Job(deadline)
        if job.should_stop():
            raise DeadlineExceeded("deadline passed before generation started")
        self._admit(job)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(deltas.put_nowait, item)

        try:
            self._pool.submit(self._run, job, messages, max_new_tokens, temperature, emit)
        except RuntimeError:  # pool shut down
            with self._lock:
                self._waiting -= 1
                job.gone = True
                self._jobs.discard(job)
            raise
        try:
            while True:
                item = await deltas.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
            if job.expired:
                raise DeadlineExceeded("deadline passed during generation")
            if job.closing:
                raise QueueClosed("the generation queue closed during generation")
        finally:
            with self._lock:
                if not job.started and not job.gone:
                    self._waiting -= 1
                job.gone = True
                self._jobs.discard(job)

    def close(self) -> None:
        """Refuse new streams and stop the running and waiting ones at their next token
        (their consumers get what was produced, then the end of the stream)."""
        with self._lock:
            self._closed = True
            for job in self._jobs:
                job.closing = True
        self._pool.shutdown(wait=False, cancel_futures=False)
