"""GenerationQueue with a fake generator: pure queue logic (cap, admission, cancellation,
deadline, own threads). The real generator is tested in test_generation_runtime.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from wacht.service.batching.generation import (
    DeadlineExceeded,
    GenerationQueue,
    QueueClosed,
    QueueFull,
)
from wacht.service.runtime.generator import GenerationStats

MESSAGES = [{"role": "user", "content": "Explain."}]


class FakeGenerator:
    """Yields `words`, then (if `endless`) keeps going until told to stop. Each token waits
    for `gate` when one is given, so a test decides when generation may proceed."""

    name = "fake"

    def __init__(self, words: int = 3, *, endless: bool = False, gate: bool = False) -> None:
        self.words = words
        self.endless = endless
        self.gate = threading.Event() if gate else None
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.calls = 0
        self.stopped = threading.Event()  # should_stop() was seen True
        self.finished = threading.Event()
        self.threads: set[str] = set()
        self.error: Exception | None = None

    def stream(
        self,
        messages,
        max_new_tokens=96,
        temperature=0.0,
        should_stop=None,
        *,
        seed=None,
        stats: GenerationStats | None = None,
    ):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.threads.add(threading.current_thread().name)
        stats = stats or GenerationStats()
        try:
            if self.error is not None:
                raise self.error
            stats.prompt_tokens, stats.prefill_s = 10, 0.01
            i = 0
            while i < max_new_tokens and (self.endless or i < self.words):
                if self.gate is not None:
                    while not self.gate.wait(0.01):
                        if should_stop is not None and should_stop():
                            break
                if should_stop is not None and should_stop():
                    self.stopped.set()
                    stats.stop_reason = "stopped"
                    return
                stats.new_tokens += 1
                stats.decode_steps += 1
                stats.decode_s += 0.05
                yield f"w{i} "
                i += 1
                time.sleep(0.001)
            stats.stop_reason = "max_new_tokens" if i >= max_new_tokens else "eos"
        finally:
            with self.lock:
                self.running -= 1
            self.finished.set()


async def collect(queue: GenerationQueue, **kwargs) -> str:
    return "".join([d async for d in queue.stream(MESSAGES, **kwargs)])


async def wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_streams_all_deltas_in_order_on_its_own_thread():
    fake = FakeGenerator(words=4)
    queue = GenerationQueue(fake)
    assert await collect(queue) == "w0 w1 w2 w3 "
    assert fake.threads and all(t.startswith("wacht-generate") for t in fake.threads)
    assert queue.active == 0 and queue.waiting == 0


async def test_max_new_tokens_is_passed_through():
    queue = GenerationQueue(FakeGenerator(endless=True))
    assert await collect(queue, max_new_tokens=2) == "w0 w1 "


async def test_concurrency_cap_is_respected_and_waiting_is_counted():
    fake = FakeGenerator(words=2, gate=True)
    queue = GenerationQueue(fake, max_concurrent=2, max_waiting=4)
    tasks = [asyncio.create_task(collect(queue)) for _ in range(5)]
    await wait_for(lambda: queue.active == 2 and queue.waiting == 3)
    assert fake.running == 2
    fake.gate.set()
    assert await asyncio.gather(*tasks) == ["w0 w1 "] * 5
    assert fake.max_running == 2
    assert queue.active == 0 and queue.waiting == 0


async def test_queue_full_when_waiting_is_exceeded():
    fake = FakeGenerator(words=1, gate=True)
    queue = GenerationQueue(fake, max_concurrent=1, max_waiting=1)
    first = asyncio.create_task(collect(queue))
    second = asyncio.create_task(collect(queue))
    await wait_for(lambda: queue.active == 1 and queue.waiting == 1)
    with pytest.raises(QueueFull) as info:
        await collect(queue)
    assert info.value.retry_after_s > 0
    fake.gate.set()
    assert await asyncio.gather(first, second) == ["w0 "] * 2
    assert await collect(queue) == "w0 "  # room again


async def test_aclose_stops_generation():
    fake = FakeGenerator(endless=True)
    queue = GenerationQueue(fake)
    stream = queue.stream(MESSAGES, max_new_tokens=10_000)
    assert await anext(stream) == "w0 "
    await stream.aclose()
    assert await asyncio.to_thread(fake.stopped.wait, 5.0)
    await wait_for(lambda: queue.active == 0)


async def test_cancelling_the_consumer_stops_generation():
    fake = FakeGenerator(endless=True)
    queue = GenerationQueue(fake)
    got: list[str] = []

    async def consume() -> None:
        async for delta in queue.stream(MESSAGES, max_new_tokens=10_000):
            got.append(delta)

    task = asyncio.create_task(consume())
    await wait_for(lambda: len(got) >= 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(fake.stopped.wait, 5.0)
    await wait_for(lambda: queue.active == 0)


async def test_a_waiting_consumer_that_leaves_frees_its_place_and_never_runs():
    fake = FakeGenerator(words=1, gate=True)
    queue = GenerationQueue(fake, max_concurrent=1, max_waiting=1)
    running = asyncio.create_task(collect(queue))
    await wait_for(lambda: queue.active == 1)
    leaving = asyncio.create_task(collect(queue))
    await wait_for(lambda: queue.waiting == 1)
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    assert queue.waiting == 0
    third = asyncio.create_task(collect(queue))  # admitted: the place was freed
    await wait_for(lambda: queue.waiting == 1)
    fake.gate.set()
    assert await asyncio.gather(running, third) == ["w0 "] * 2
    assert fake.calls == 2


async def test_deadline_stops_generation_and_raises_after_partial_output():
    fake = FakeGenerator(endless=True)
    queue = GenerationQueue(fake)
    got: list[str] = []
    with pytest.raises(DeadlineExceeded):
        async for delta in queue.stream(
            MESSAGES, max_new_tokens=10_000_000, deadline=time.monotonic() + 0.3
        ):
            got.append(delta)
    assert got  # what was produced before the deadline was delivered
    assert fake.stopped.is_set()


async def test_passed_deadline_is_refused_without_generating():
    fake = FakeGenerator()
    queue = GenerationQueue(fake)
    with pytest.raises(DeadlineExceeded):
        await collect(queue, deadline=time.monotonic() - 1)
    assert fake.calls == 0 and queue.waiting == 0


async def test_generator_errors_reach_the_consumer_and_free_the_slot():
    fake = FakeGenerator()
    fake.error = RuntimeError("boom")
    queue = GenerationQueue(fake)
    with pytest.raises(RuntimeError, match="boom"):
        await collect(queue)
    assert queue.active == 0
    fake.error = None
    assert await collect(queue) == "w0 w1 w2 "


async def test_tokens_per_second_is_measured_from_completed_generations():
    queue = GenerationQueue(FakeGenerator(words=4))
    assert queue.tokens_per_second == 0.0 and queue.estimate_seconds(10) is None
    await collect(queue)
    # the fake reports 0.05 s per decode step: 20 tokens/s
    assert queue.tokens_per_second == pytest.approx(20.0)
    assert queue.estimate_seconds(40) == pytest.approx(2.0, rel=0.01)


async def test_close_stops_running_and_waiting_streams_and_refuses_new_ones():
    fake = FakeGenerator(endless=True)
    queue = GenerationQueue(fake, max_concurrent=1, max_waiting=2)
    got: list[str] = []

    async def consume() -> None:
        async for delta in queue.stream(MESSAGES, max_new_tokens=10_000_000):
            got.append(delta)

    running = asyncio.create_task(consume())
    await wait_for(lambda: len(got) >= 1)
    waiting = asyncio.create_task(collect(queue))
    await wait_for(lambda: queue.waiting == 1)
    queue.close()
    for task in (running, waiting):
        with pytest.raises(QueueClosed):
            await asyncio.wait_for(task, 5.0)
    assert fake.stopped.is_set() and fake.calls == 1
    with pytest.raises(QueueClosed):
        await collect(queue)
    assert queue.active == 0 and queue.waiting == 0
