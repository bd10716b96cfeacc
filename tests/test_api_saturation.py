"""Refusing at the door while the event loop is saturated (service/api/intake.py Saturation):
pure logic, with a fake clock, a fake idle clock and a fake draw."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.rpc import error_details_pb2

from wacht.service.api.errors import ApiError
from wacht.service.api.intake import Saturation
from wacht.service.observability import loopload


class _Loop:
    """A loop whose busy share per window the test sets."""

    def __init__(self) -> None:
        self.now = 0.0
        self.idle = 0.0

    def run(self, seconds: float, busy: float) -> None:
        self.now += seconds
        self.idle += seconds * (1.0 - busy)


def _saturation(loop: _Loop, max_busy: float = 0.9, draw: float = 0.5) -> Saturation:
    return Saturation(max_busy, idle_s=lambda: loop.idle, clock=lambda: loop.now,
                      draw=lambda: draw)


def _windows(saturation: Saturation, loop: _Loop, busy: float, count: int) -> None:
    """`count` windows at `busy`, with one call checked at the end of each (refusals kept)."""
    for _ in range(count):
        loop.run(Saturation.WINDOW_S * 1.01, busy)
        with contextlib.suppress(ApiError):
            saturation.check()


def test_a_loop_under_the_bound_admits_every_call() -> None:
    loop = _Loop()
    saturation = _saturation(loop, draw=0.999)
    for _ in range(20):
        loop.run(Saturation.WINDOW_S * 1.01, 0.85)
        saturation.check()  # never raises
    assert saturation.admitted == 1.0
    assert saturation.busy == pytest.approx(0.85)


def test_a_saturated_loop_refuses_a_growing_share_with_a_retry_hint() -> None:
    loop = _Loop()
    saturation = _saturation(loop, draw=0.5)
    saturation.check()  # first call starts the clock
    _windows(saturation, loop, 1.0, Saturation.STREAK - 1)
    assert saturation.admitted == 1.0  # a burst the loop works off in a moment is served
    _windows(saturation, loop, 0.5, Saturation.STREAK)  # calm windows: the streak is gone
    _windows(saturation, loop, 1.0, Saturation.STREAK - 1)
    assert saturation.admitted == 1.0
    _windows(saturation, loop, 1.0, 2)
    assert saturation.admitted == pytest.approx(0.49)  # 1.0 * 0.7 * 0.7
    with pytest.raises(ApiError) as refused:
        saturation.check()  # draw 0.5 >= admitted 0.49
    error = refused.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "event loop 100% busy" in error.message and "admitting 49%" in error.message
    [retry] = [d for d in error.details if isinstance(d, error_details_pb2.RetryInfo)]
    delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    # the admitted share comes back by 10 points a window: 0.51 / 0.1 windows of 50 ms
    assert delay == pytest.approx(0.255, abs=1e-6)


def test_the_admitted_share_has_a_floor_and_recovers_once_the_loop_calms() -> None:
    loop = _Loop()
    saturation = _saturation(loop)
    saturation.check()
    _windows(saturation, loop, 0.99, 40)
    assert saturation.admitted == Saturation.FLOOR
    _windows(saturation, loop, 0.5, 5)
    assert saturation.admitted == pytest.approx(Saturation.FLOOR + 0.5)
    _windows(saturation, loop, 0.5, 5)
    assert saturation.admitted == 1.0


def test_an_idle_loop_lets_the_next_call_in_at_once() -> None:
    loop = _Loop()
    saturation = _saturation(loop, draw=0.5)
    saturation.check()
    _windows(saturation, loop, 1.0, 12)
    assert saturation.admitted < 0.1
    loop.run(0.006, 0.0)  # the flood stopped: 6 ms in select, a window's 10% slack and more
    saturation.check()  # admitted without waiting for the window to end
    assert saturation.admitted == 1.0 and saturation.busy == pytest.approx(0.0, abs=1e-9)


def test_off_at_zero_and_where_the_loop_is_not_clocked() -> None:
    loop = _Loop()
    off = _saturation(loop, max_busy=0.0, draw=0.999)
    unclocked = Saturation(0.9, idle_s=lambda: None, clock=lambda: loop.now, draw=lambda: 0.999)
    for _ in range(20):
        loop.run(Saturation.WINDOW_S * 1.01, 1.0)
        off.check()
        unclocked.check()
    assert off.admitted == 1.0 and unclocked.admitted == 1.0


def test_the_server_loop_clocks_its_waits_in_select() -> None:
    async def measure() -> tuple[float | None, float | None]:
        before = loopload.idle_s()
        await asyncio.sleep(0.2)  # waits in select
        return before, loopload.idle_s()

    loop = loopload.new_event_loop()
    try:
        before, after = loop.run_until_complete(measure())
    finally:
        loop.close()
    assert before is not None and after is not None
    assert after - before >= 0.15
    assert asyncio.run(_idle_elsewhere()) is None  # a loop made elsewhere is not clocked


async def _idle_elsewhere() -> float | None:
    return loopload.idle_s()


def test_a_polite_caller_beside_a_flooding_one_is_let_in() -> None:
    loop = _Loop()
    saturation = _saturation(loop, draw=0.5)
    saturation.check("flood")
    refused = {"flood": 0, "polite": 0}
    for _ in range(12):  # saturated windows: the flood sends 40 calls to the polite one's 1
        for i in range(41):
            loop.run(Saturation.WINDOW_S * 1.01 / 41, 1.0)
            caller = "polite" if i == 20 else "flood"
            try:
                saturation.check(caller)
            except ApiError:
                refused[caller] += 1
    assert saturation.admitted < 0.1
    assert refused["polite"] == 0
    assert refused["flood"] > 200
    # callers with like shares are all refused alike
    even = _saturation(loop, draw=0.5)
    outcomes: list[bool] = []
    for _ in range(12):
        for caller in ("a", "b", "a", "b"):
            loop.run(Saturation.WINDOW_S * 1.01 / 4, 1.0)
            try:
                even.check(caller)
                outcomes.append(True)
            except ApiError:
                outcomes.append(False)
    assert outcomes[-8:] == [False] * 8
