"""Batcher logic with a fake engine (and a fake clock where time matters)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from wacht.service.batching.batcher import (
    Batcher,
    BatcherClosed,
    BatchingConfig,
    DeadlineExceeded,
    QueueFull,
    micro_limits,
)
from wacht.service.runtime.engine import EncodedText, TextScores, TextTooLong
from wacht.service.runtime.packing import micro_batches

FAIL = 666  # a window holding this id makes the fake model raise


class FakeEngine:
    """Texts are space-separated integers; '|' starts a new window. A window is its ids
    between 1 and 2 (the 'specials'); its logit is the sum of its ids. Ids >= 700 block
    the forward that holds them until released."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.gates: dict[int, threading.Event] = {}
        self.started: set[int] = set()
        self.lock = threading.Lock()
        self.tokenizing = threading.Event()

    def gate(self, token: int) -> threading.Event:
        self.gates[token] = threading.Event()
        return self.gates[token]

    def encode(self, texts, truncation="window", max_windows=16):
        out = []
        for index, text in enumerate(texts):
            if text.startswith("~"):  # held in the tokeniser until `tokenizing` is set
                assert self.tokenizing.wait(10), "test forgot to release the tokeniser"
                text = text[1:]
            if text == "too long":
                raise TextTooLong(index, 999, 10)
            parts = [[int(t) for t in part.split()] for part in text.split("|")]
            windows = [[1, *ids, 2] for ids in parts]
            out.append(EncodedText(windows=windows, tokens=sum(len(p) for p in parts)))
        return out

    def forward(self, windows, outputs=None):
        with self.lock:
            self.calls.append([list(w) for w in windows])
        for w in windows:
            for token in w:
                if token in self.gates:
                    self.started.add(token)
                    assert self.gates[token].wait(10), "test forgot to release a gate"
        if any(FAIL in w for w in windows):
            raise RuntimeError("model exploded")
        return {"out": np.array([[float(sum(w))] for w in windows], dtype=np.float32)}

    def scores_from_logits(self, encoded, logits):
        out, row = [], 0
        for e in encoded:
            n = len(e.windows)
            total = logits["out"][row : row + n, 0].sum()
            out.append(TextScores(scores={"sum": np.array([total])}, tokens=e.tokens, windows=n))
            row += n
        return out

    def forwarded(self, token: int) -> bool:
        with self.lock:
            return any(token in w for call in self.calls for w in call)

    def batch_lengths(self) -> list[list[int]]:
        with self.lock:
            return [[len(w) for w in call] for call in self.calls]


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []
        self.depths: list[int] = []
        self.drops: list[tuple[str, int]] = []
        self.formed: list[int] = []

    def batch_done(self, size, tokens, padded_tokens, inference_s):
        self.batches.append((size, tokens, padded_tokens))

    def queue_depth(self, texts):
        self.depths.append(texts)

    def batch_formed(self, windows):
        self.formed.append(windows)

    def dropped(self, reason, count):
        self.drops.append((reason, count))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BIG = 10**9


def config(**overrides) -> BatchingConfig:
    base = dict(
        max_batch_tokens=BIG,
        max_batch_size=BIG,
        max_queue_delay_ms=0,
        max_queue_texts=1000,
        micro_batch_tokens=BIG,
        micro_batch_size=BIG,
        micro_batch_padding=1.0,
    )
    base.update(overrides)
    return BatchingConfig(**base)


async def until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.002)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def started(engine: FakeEngine, cfg: BatchingConfig, recorder: Recorder, clock=None):
    batcher = Batcher(engine, cfg, recorder, **({"clock": clock} if clock else {}))
    await batcher.start()
    return batcher


async def block_engine(batcher: Batcher, engine: FakeEngine, token: int = 700):
    """Occupy the (single) inference thread until the returned event is set."""
    gate = engine.gate(token)
    task = asyncio.create_task(batcher.score([str(token)]))
    await until(lambda: token in engine.started)
    return gate, task


def total(scores: list[TextScores]) -> list[float]:
    return [float(s.scores["sum"][0]) for s in scores]


async def test_scores_come_back_to_their_callers_in_order(engine, recorder):
    batcher = await started(engine, config(), recorder)
    gate, blocker = await block_engine(batcher, engine)
    calls = [batcher.score(["5 5", "7 | 8"]), batcher.score(["10"]), batcher.score(["20 1"])]
    tasks = [asyncio.create_task(c) for c in calls]
    await until(lambda: batcher.queue_windows == 5)
    gate.set()
    results = await asyncio.gather(*tasks)
    await blocker
    # each window sums its ids plus the specials 1 and 2
    assert total(results[0][0]) == [13.0, 7 + 3 + 8 + 3]
    assert total(results[1][0]) == [13.0]
    assert total(results[2][0]) == [24.0]
    assert [s.windows for s in results[0][0]] == [1, 2]
    assert results[0][1].tokens == 4
    # the three requests queued behind the blocker were served by one forward
    assert engine.batch_lengths()[1] == sorted([4, 3, 3, 3, 4])
    await batcher.stop()
    assert batcher.queue_texts == 0


async def test_batch_closes_on_padded_token_budget(engine, recorder):
    batcher = await started(engine, config(max_batch_tokens=20), recorder)
    gate, blocker = await block_engine(batcher, engine)
    # lengths with specials: 3, 10, 3, 3 -> [3, 10] costs 10*2 = 20; adding 3 costs 30 > 20
    texts = ["1", "1 2 3 4 5 6 7 8", "1", "1"]
    tasks = [asyncio.create_task(batcher.score([t])) for t in texts]
    await until(lambda: batcher.queue_windows == 4)
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert engine.batch_lengths()[1:] == [[3, 10], [3, 3]]
    assert recorder.batches[1] == (2, 13, 20)
    await batcher.stop()


async def test_batch_closes_on_size(engine, recorder):
    batcher = await started(engine, config(max_batch_size=3), recorder)
    gate, blocker = await block_engine(batcher, engine)
    tasks = [asyncio.create_task(batcher.score([str(i)])) for i in range(7)]
    await until(lambda: batcher.queue_windows == 7)
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [len(b) for b in engine.batch_lengths()[1:]] == [3, 3, 1]
    await batcher.stop()


async def test_idle_engine_dispatches_without_waiting_for_the_delay(engine, recorder):
    clock = FakeClock()  # frozen: a delay measured on it would never pass
    cfg = config(max_queue_delay_ms=60_000, micro_batch_size=2)  # 3 texts: the queued path
    batcher = await started(engine, cfg, recorder, clock)
    scores, _ = await asyncio.wait_for(batcher.score(["3", "4", "5"]), 5)
    assert total(scores) == [6.0, 7.0, 8.0]
    assert engine.batch_lengths() == [[3, 3], [3]]
    await batcher.stop()


async def test_idle_small_call_runs_directly_and_later_calls_queue(engine, recorder):
    batcher = await started(engine, config(micro_batch_size=2), recorder)
    gate, direct = await block_engine(batcher, engine)  # found the batcher idle
    queued = [asyncio.create_task(batcher.score([str(i)])) for i in (1, 2, 3)]
    await until(lambda: batcher.queue_windows == 3)
    assert len(engine.calls) == 1
    gate.set()
    scores, timings = await direct
    assert total(scores) == [703.0] and timings.queue_ns == 0 and timings.tokens == 1
    assert [total((await t)[0]) for t in queued] == [[4.0], [5.0], [6.0]]
    assert engine.batch_lengths()[1:] == [[3, 3], [3]]
    assert [b[0] for b in recorder.batches] == [1, 2, 1]
    assert recorder.formed == [3]  # one queue batch, two forwards; the direct call is not one
    assert batcher.queue_texts == 0
    await batcher.stop()


async def test_engine_error_on_the_direct_path_reaches_the_caller(engine, recorder):
    batcher = await started(engine, config(), recorder)
    with pytest.raises(RuntimeError, match="model exploded"):
        await batcher.score([f"{FAIL}"])
    assert batcher.queue_texts == 0
    assert total((await batcher.score(["1"]))[0]) == [4.0]
    await batcher.stop()


async def test_free_thread_waits_for_the_delay_while_another_batch_runs(engine, recorder):
    clock = FakeClock()
    cfg = config(max_queue_delay_ms=100, inference_threads=2)
    batcher = await started(engine, cfg, recorder, clock)
    gate, blocker = await block_engine(batcher, engine)
    waiting = asyncio.create_task(batcher.score(["42"]))
    await asyncio.sleep(0.3)  # real time passes, the fake clock does not
    assert not engine.forwarded(42)
    clock.now += 0.2
    await asyncio.wait_for(waiting, 5)
    assert not blocker.done()  # it ran on the second thread, beside the blocked batch
    gate.set()
    await blocker
    await batcher.stop()


async def test_full_batch_does_not_wait_for_the_delay(engine, recorder):
    clock = FakeClock()
    cfg = config(max_queue_delay_ms=60_000, inference_threads=2, max_batch_size=2)
    batcher = await started(engine, cfg, recorder, clock)
    gate, blocker = await block_engine(batcher, engine)
    tasks = [asyncio.create_task(batcher.score([str(i)])) for i in (41, 42, 43)]
    await until(lambda: engine.forwarded(41) and engine.forwarded(42))
    assert [len(b) for b in engine.batch_lengths()[1:]] == [2]
    gate.set()
    clock.now += 61  # let the leftover single window go
    await asyncio.wait_for(asyncio.gather(blocker, *tasks), 5)
    await batcher.stop()


async def test_windows_are_length_sorted_into_micro_batches(engine, recorder):
    batcher = await started(engine, config(micro_batch_size=2), recorder)
    gate, blocker = await block_engine(batcher, engine)
    texts = ["1 2 3 4 5 6 7 8", "1", "1 2 3 4 5 6 7", "1 2"]  # lengths 10, 3, 9, 4
    tasks = [asyncio.create_task(batcher.score([t])) for t in texts]
    await until(lambda: batcher.queue_windows == 4)
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert engine.batch_lengths()[1:] == [[3, 4], [9, 10]]
    assert [b[2] for b in recorder.batches[1:]] == [8, 20]  # padded cost per micro-batch
    await batcher.stop()


async def test_micro_batch_token_budget_limits_padding(engine, recorder):
    batcher = await started(engine, config(micro_batch_tokens=12), recorder)
    gate, blocker = await block_engine(batcher, engine)
    texts = ["1", "1", "1", "1 2 3 4 5 6 7 8"]  # 3, 3, 3, 10
    tasks = [asyncio.create_task(batcher.score([t])) for t in texts]
    await until(lambda: batcher.queue_windows == 4)
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert engine.batch_lengths()[1:] == [[3, 3, 3], [10]]
    await batcher.stop()


async def test_deadline_passed_in_queue_is_dropped_before_inference(engine, recorder):
    clock = FakeClock()
    batcher = await started(engine, config(), recorder, clock)
    gate, blocker = await block_engine(batcher, engine)
    late = asyncio.create_task(batcher.score(["55", "56"], deadline=clock.now + 5))
    on_time = asyncio.create_task(batcher.score(["57"], deadline=clock.now + 50))
    await until(lambda: batcher.queue_windows == 3)
    clock.now += 10
    gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    assert total((await on_time)[0]) == [60.0]
    await blocker
    assert not engine.forwarded(55) and not engine.forwarded(56)
    assert recorder.drops == [("deadline", 2)]
    assert batcher.queue_texts == 0
    await batcher.stop()


async def test_deadline_already_passed_is_refused_at_admission(engine, recorder):
    clock = FakeClock()
    batcher = await started(engine, config(), recorder, clock)
    with pytest.raises(DeadlineExceeded):
        await batcher.score(["1"], deadline=clock.now - 1)
    assert engine.calls == [] and batcher.queue_texts == 0
    await batcher.stop()


async def test_cancelled_caller_is_dropped_before_inference(engine, recorder):
    batcher = await started(engine, config(), recorder)
    gate, blocker = await block_engine(batcher, engine)
    gone = asyncio.create_task(batcher.score(["77", "78", "79"]))
    stays = asyncio.create_task(batcher.score(["80"]))
    await until(lambda: batcher.queue_windows == 4)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queue_texts == 2
    gate.set()
    assert total((await stays)[0]) == [83.0]
    await blocker
    assert not any(engine.forwarded(t) for t in (77, 78, 79))
    assert recorder.drops == [("cancelled", 3)]
    await batcher.stop()


async def test_cancelled_windows_inside_a_running_batch_are_skipped(engine, recorder):
    batcher = await started(engine, config(micro_batch_size=1), recorder)
    gate, blocker = await block_engine(batcher, engine)
    second_gate = engine.gate(701)
    first = asyncio.create_task(batcher.score(["701"]))  # shorter: its micro-batch runs first
    gone = asyncio.create_task(batcher.score(["90 91 92"]))
    await until(lambda: batcher.queue_windows == 2)
    gate.set()
    await until(lambda: 701 in engine.started)  # the batch [701 | 90 91 92] is running
    gone.cancel()
    await asyncio.sleep(0.01)
    second_gate.set()
    await asyncio.gather(blocker, first)
    assert not engine.forwarded(90)
    assert ("cancelled", 1) in recorder.drops
    await batcher.stop()


async def test_queue_full_at_admission_then_recovers(engine, recorder):
    batcher = await started(engine, config(max_queue_texts=4), recorder)
    gate, blocker = await block_engine(batcher, engine)
    queued = asyncio.create_task(batcher.score(["1", "2", "3"]))
    await until(lambda: batcher.queue_windows == 3)
    with pytest.raises(QueueFull) as full:
        await batcher.score(["4"])
    assert full.value.retry_after_s > 0
    assert batcher.queue_texts == 4  # nothing of the refused call was admitted
    gate.set()
    await asyncio.gather(blocker, queued)
    assert batcher.queue_texts == 0
    scores, _ = await batcher.score(["4", "5", "6", "7"])
    assert total(scores) == [7.0, 8.0, 9.0, 10.0]
    await batcher.stop()


async def test_call_larger_than_the_queue_is_refused_all_or_nothing(engine, recorder):
    batcher = await started(engine, config(max_queue_texts=2), recorder)
    gate, blocker = await block_engine(batcher, engine)
    with pytest.raises(QueueFull):
        await batcher.score(["1", "2"])  # 1 slot left, 2 asked: none admitted
    with pytest.raises(ValueError):
        await batcher.score(["1", "2", "3"])  # could never fit
    assert batcher.queue_texts == 1
    gate.set()
    await blocker
    await batcher.stop()


async def test_engine_error_reaches_only_the_affected_callers(engine, recorder):
    batcher = await started(engine, config(micro_batch_size=1), recorder)
    gate, blocker = await block_engine(batcher, engine)
    ok1 = asyncio.create_task(batcher.score(["1"]))
    bad = asyncio.create_task(batcher.score(["3", f"{FAIL} 1"]))
    ok2 = asyncio.create_task(batcher.score(["2 2 2"]))
    await until(lambda: batcher.queue_windows == 4)
    gate.set()
    with pytest.raises(RuntimeError, match="model exploded"):
        await bad
    assert total((await ok1)[0]) == [4.0]
    assert total((await ok2)[0]) == [9.0]
    await blocker
    assert batcher.queue_texts == 0
    scores, _ = await batcher.score(["5"])  # the batcher lives on
    assert total(scores) == [8.0]
    await batcher.stop()


async def test_text_too_long_from_tokenisation_is_raised_and_released(engine, recorder):
    batcher = await started(engine, config(), recorder)
    with pytest.raises(TextTooLong) as err:
        await batcher.score(["too long"], truncation="reject")
    assert err.value.index == 0
    assert batcher.queue_texts == 0
    await batcher.stop()


async def test_stop_drains_queued_work_and_refuses_new(engine, recorder):
    batcher = await started(engine, config(), recorder)
    gate, blocker = await block_engine(batcher, engine)
    queued = [asyncio.create_task(batcher.score([str(i)])) for i in (11, 12)]
    await until(lambda: batcher.queue_windows == 2)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0.02)
    assert not stopping.done()
    with pytest.raises(BatcherClosed):
        await batcher.score(["1"])
    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert all(t.done() for t in queued)
    assert [total((await t)[0]) for t in queued] == [[14.0], [15.0]]
    await blocker


async def test_event_loop_keeps_accepting_while_inference_runs(engine, recorder):
    batcher = await started(engine, config(), recorder)
    gate, blocker = await block_engine(batcher, engine)
    more = asyncio.create_task(batcher.score(["9"]))
    await until(lambda: batcher.queue_texts == 2)  # admitted while the forward is blocked
    assert recorder.depths[-1] == 2
    gate.set()
    await asyncio.gather(blocker, more)
    await batcher.stop()


async def test_max_batch_size_one_turns_batching_off_on_every_path(engine, recorder):
    batcher = await started(engine, config(max_batch_size=1), recorder)
    await batcher.score(["1", "2", "3"])  # idle: the direct path
    gate, blocker = await block_engine(batcher, engine)
    queued = asyncio.create_task(batcher.score(["4", "5"]))
    await until(lambda: batcher.queue_windows == 2)
    gate.set()
    await asyncio.gather(blocker, queued)
    assert all(len(call) == 1 for call in engine.calls) and len(engine.calls) == 6
    await batcher.stop()


def test_micro_batches_bound_the_share_of_padding():
    lengths = [10, 10, 11, 12, 40, 41, 200]
    # no padding bound: one group up to the token budget
    assert micro_batches(lengths, 10_000, 8) == [[0, 1, 2, 3, 4, 5, 6]]
    # at most 20% padding: similar lengths stay together, outliers start a new forward
    assert micro_batches(lengths, 10_000, 8, 0.2) == [[0, 1, 2, 3], [4, 5], [6]]


class _Manifest:
    def __init__(self, precision: str) -> None:
        self.precision = precision


class _Engine:
    def __init__(self, precision: str, providers: list[str]) -> None:
        self.manifest = _Manifest(precision)
        self.providers = providers


CPU = ["CPUExecutionProvider"]
GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_micro_limits_follow_the_model_and_device():
    default = BatchingConfig()
    # int8 scores depend on batch neighbours: one window per forward, on any device
    assert micro_limits(default, _Engine("int8", CPU))[:2] == (1024, 1)
    assert micro_limits(default, _Engine("int8", GPU))[:2] == (4096, 1)
    assert micro_limits(default, _Engine("fp32", CPU)) == (1024, 8, 0.2)
    assert micro_limits(default, _Engine("fp16", GPU)) == (4096, 64, 0.2)
    chosen = BatchingConfig(micro_batch_size=4, micro_batch_tokens=300, max_batch_size=2)
    assert micro_limits(chosen, _Engine("int8", CPU)) == (300, 2, 0.2)  # never above the batch


async def test_admission_by_estimated_wait_and_deadline():
    from wacht.service.batching.batcher import Overloaded

    engine, recorder = FakeEngine(), Recorder()
    cfg = config(inference_threads=1, max_queue_wait_ms=0, max_standing_wait_ms=0)
    batcher = await started(engine, cfg, recorder)
    gate, running = await block_engine(batcher, engine)
    batcher._cost.observe(1, 3, 0.012)  # as if measured: 4 ms per token
    waiting = [asyncio.create_task(batcher.score([f"{i}"])) for i in range(5)]
    await until(lambda: batcher.queue_windows == 5)
    batcher.config.max_queue_wait_ms = 30
    # 5 queued flows of 3 tokens + the running window (2 tokens estimated from its 3
    # characters) ahead: 17 tokens, 68 ms > 30 ms
    assert batcher._running_tokens == 2
    assert batcher.estimated_wait(1) == pytest.approx(0.068)
    with pytest.raises(Overloaded) as caught:
        await batcher.score(["9"])
    assert caught.value.retry_after_s == pytest.approx(0.038)
    assert ("overloaded", 1) in recorder.drops
    # no bound, but the deadline is nearer than the estimated finish
    batcher.config.max_queue_wait_ms = 0
    with pytest.raises(Overloaded):
        await batcher.score(["9"], deadline=time.monotonic() + 0.02)
    gate.set()
    await running
    assert len(await asyncio.gather(*waiting)) == 5
    await batcher.stop()


async def test_the_wait_estimate_stops_counting_what_a_running_batch_has_done():
    """One window per forward: a dispatched batch of four windows counts as ahead of a new
    call only for the windows it has not run yet."""
    engine = FakeEngine()
    batcher = await started(engine, config(inference_threads=1, micro_batch_size=1), Recorder())
    gate, blocker = await block_engine(batcher, engine)
    last = engine.gate(701)
    call = asyncio.create_task(batcher.score(["5", "6", "8", "701 1 1"]))
    await until(lambda: batcher.queue_windows == 4)
    assert (batcher._running_windows, batcher._running_tokens) == (1, 2)
    gate.set()
    await blocker
    await until(lambda: 701 in engine.started)  # the longest window runs last
    await asyncio.sleep(0.05)  # the three finished windows' callbacks reach the loop
    assert (batcher._running_windows, batcher._running_tokens) == (1, 5)
    last.set()
    assert total((await call)[0]) == [8.0, 9.0, 11.0, 706.0]
    await until(lambda: batcher._in_flight == 0)
    assert (batcher._running_windows, batcher._running_tokens) == (0, 0)
    await batcher.stop()


async def test_overload_drops_the_bound_to_the_standing_one_until_idle():
    """Once max_queue_wait_ms refuses a call, calls may wait only max_standing_wait_ms: the
    queued calls past it are refused at once, new ones over it too; idle, the long bound
    is back."""
    from wacht.service.batching.batcher import Overloaded

    engine, recorder, clock = FakeEngine(), Recorder(), FakeClock()
    cfg = config(inference_threads=1, max_queue_wait_ms=30, max_standing_wait_ms=10,
                 standing_after_ms=100)
    batcher = await started(engine, cfg, recorder, clock)
    gate, running = await block_engine(batcher, engine)
    batcher._cost.observe(1, 3, 0.012)  # as if measured: 4 ms per token, 12 ms a window
    # the running window (8 ms) and two queued ones (12 ms each) are 32 ms of work
    first = asyncio.create_task(batcher.score(["5"]))
    second = asyncio.create_task(batcher.score(["6"]))
    await until(lambda: batcher.queue_windows == 2)
    assert batcher.wait_bound() == pytest.approx(0.030)  # a burst: the long bound
    with pytest.raises(Overloaded) as over:
        await batcher.score(["9"])  # 32 ms > 30 ms
    assert over.value.wait_s == pytest.approx(0.032)
    # refused by the bound once, and again after a gap longer than 100 ms: still a burst
    clock.now += 0.15
    with pytest.raises(Overloaded):
        await batcher.score(["9"])
    assert batcher.wait_bound() == pytest.approx(0.030)
    clock.now += 0.06
    with pytest.raises(Overloaded):
        await batcher.score(["9"])
    assert batcher.wait_bound() == pytest.approx(0.030)
    # refusals with no gap over 100 ms for 100 ms: overload
    clock.now += 0.05
    with pytest.raises(Overloaded):
        await batcher.score(["9"])
    assert batcher.wait_bound() == pytest.approx(0.010)
    # the second queued call would start 20 ms from now, past the standing 10 ms: refused,
    # with the time until it would have fitted; the first (8 ms away) is kept
    with pytest.raises(Overloaded) as late:
        await second
    assert late.value.retry_after_s == pytest.approx(0.010)
    assert batcher.queue_windows == 1
    assert recorder.drops.count(("overloaded", 1)) == 5
    with pytest.raises(Overloaded):
        await batcher.score(["7"])  # 20 ms > 10 ms
    gate.set()
    await running
    assert total((await first)[0]) == [8.0]
    await until(lambda: batcher._in_flight == 0)
    assert batcher.wait_bound() == pytest.approx(0.030)  # idle again: a burst may queue
    assert total((await batcher.score(["4"]))[0]) == [7.0]
    await batcher.stop()


async def test_the_standing_bound_is_off_at_zero():
    from wacht.service.batching.batcher import Overloaded

    engine = FakeEngine()
    cfg = config(inference_threads=1, max_queue_wait_ms=30, max_standing_wait_ms=0)
    batcher = await started(engine, cfg, Recorder())
    gate, running = await block_engine(batcher, engine)
    batcher._cost.observe(1, 3, 0.012)
    queued = [asyncio.create_task(batcher.score([f"{i}"])) for i in (5, 6)]
    await until(lambda: batcher.queue_windows == 2)
    with pytest.raises(Overloaded):
        await batcher.score(["9"])
    assert batcher.wait_bound() == pytest.approx(0.030)
    assert batcher.queue_windows == 2  # nothing queued was refused
    gate.set()
    await running
    assert len(await asyncio.gather(*queued)) == 2
    await batcher.stop()


async def test_calls_being_tokenised_count_in_the_wait_each_as_a_flow():
    """Admitted calls still in the tokeniser are not in the queue yet, but will be ahead:
    each counts with at most the new call's windows (round-robin), so a big call being
    tokenised does not make a small call's wait look like the big call's whole length."""
    engine = FakeEngine()
    batcher = await started(engine, config(inference_threads=1), Recorder())
    gate, running = await block_engine(batcher, engine)
    batcher._cost.observe(1, 3, 0.012)  # no fixed part: 4 ms per token
    base = batcher.estimated_wait(1)
    big = asyncio.create_task(batcher.score(["~1", "~2", "~3", "~4"]))
    await until(lambda: batcher._pending_calls == 1)
    per_window = batcher._pending_tokens / 4
    assert batcher.estimated_wait(1) == pytest.approx(base + 0.004 * per_window)
    assert batcher.estimated_wait(3, tokens=0) == pytest.approx(base + 3 * 0.004 * per_window)
    small = [asyncio.create_task(batcher.score([f"~{i}"])) for i in (5, 6)]
    await until(lambda: batcher._pending_calls == 3)
    assert batcher._pending_windows == 6
    # three flows ahead, one window each, of their mean tokens
    mean = batcher._pending_tokens / 6
    assert batcher.estimated_wait(1) == pytest.approx(base + 3 * 0.004 * mean)
    engine.tokenizing.set()
    await until(lambda: batcher._pending_calls == 0)
    assert (batcher._pending_windows, batcher._pending_tokens) == (0, 0)
    gate.set()
    await running
    assert [total(s) for s, _ in await asyncio.gather(big, *small)] == [
        [4.0, 5.0, 6.0, 7.0], [8.0], [9.0]]
    await batcher.stop()


def test_window_cost_tells_the_fixed_part_from_the_part_per_token():
    from wacht.service.batching.cost import WindowCost

    cost = WindowCost()
    assert not cost.known and cost.seconds(10, 100) == 0.0
    for _ in range(10):
        cost.observe(1, 10, 0.001 + 10 * 0.0001)
        cost.observe(1, 250, 0.001 + 250 * 0.0001)
    fixed, per_token = cost.line()
    assert fixed == pytest.approx(0.001, rel=1e-3)
    assert per_token == pytest.approx(0.0001, rel=1e-3)
    # a short window costs far less than a long one (one per-window figure would charge
    # both the mean of the two)
    assert cost.seconds(1, 10) == pytest.approx(0.002, rel=1e-2)
    assert cost.seconds(1, 250) == pytest.approx(0.026, rel=1e-2)


def test_window_cost_of_windows_of_one_length_is_proportional_to_tokens():
    from wacht.service.batching.cost import WindowCost

    cost = WindowCost()
    for _ in range(5):
        cost.observe(4, 40, 0.008)  # 2 ms per 10-token window
    assert cost.line() == (0.0, pytest.approx(0.0002))
    assert cost.seconds(3, 30) == pytest.approx(0.006)
    assert cost.window_tokens == pytest.approx(10)


async def test_a_large_call_gives_memory_back_after_its_answer(monkeypatch):
    """After a call of TRIM_AFTER_WINDOWS windows or more, and only then, the batcher asks
    for a garbage collection and malloc_trim, TRIM_DELAY_S after the answer."""
    from wacht.service.batching import batcher as module

    trims: list[bool] = []
    monkeypatch.setattr(module, "TRIM_AFTER_WINDOWS", 4)
    monkeypatch.setattr(module, "TRIM_DELAY_S", 0.05)
    monkeypatch.setattr(module.memory, "trim", lambda collect=False: trims.append(collect))
    engine = FakeEngine()
    batcher = await started(engine, config(inference_threads=1, micro_batch_size=1), Recorder())
    await batcher.score(["1 | 2 | 3"])  # three windows: below the mark
    await asyncio.sleep(0.15)
    assert trims == []
    answered = await batcher.score(["1 | 2 | 3", "4 | 5"])
    assert total(answered[0]) == [15.0, 15.0]
    assert trims == []  # not before the delay
    await until(lambda: trims == [True])
    await batcher.stop()


def test_memory_trim_runs_here():
    from wacht.service.runtime import memory

    assert isinstance(memory.trim(collect=True), bool)


async def test_a_call_surely_over_the_cost_cap_is_refused_before_tokenising(monkeypatch):
    """Every word is a token or more, so 100-word texts need 16 windows each (of 4 content
    tokens, max 16 per text): three of them are over a cap of 20 without a tokeniser run;
    a call the lower bound cannot prove too large is tokenised as before."""
    from types import SimpleNamespace

    from wacht.service.batching.batcher import CallTooLarge

    engine = FakeEngine()
    engine.tokenizer = SimpleNamespace(content=4, stride=4)
    encoded: list[int] = []
    real_encode = engine.encode
    monkeypatch.setattr(engine, "encode", lambda texts, *a: encoded.append(len(texts))
                        or real_encode(texts, *a))
    batcher = await started(engine, config(max_call_windows=20), Recorder())
    batcher._chars_per_window = 16.0  # 4 characters per token
    long = " ".join(["1"] * 100)
    assert batcher.windows_at_least([long] * 3) == 48
    with pytest.raises(CallTooLarge) as caught:
        await batcher.score([long] * 3)
    assert caught.value.windows == 32 and caught.value.limit == 20  # counting stopped over 20
    assert encoded == []  # refused untokenised
    # 40 characters in 4 words: estimated at 3 windows each, but the words prove only 1
    wide = "123456789 " * 4
    assert batcher.windows_at_least([wide] * 8) == 8
    assert len((await batcher.score([wide] * 8))[0]) == 8
    assert encoded  # tokenised and answered
    await batcher.stop()
