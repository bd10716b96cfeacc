"""Closed- and open-loop load, bounded in requests and in time (runs in bench/.venv-bench)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

Call = Callable[[list[str]], Awaitable[object]]


@dataclass
class PointResult:
    mode: str                   # closed | open
    level: float                # concurrency (closed) or offered requests/s (open)
    texts_per_call: int
    requests: int = 0
    ok: int = 0
    texts_ok: int = 0
    elapsed_s: float = 0.0
    errors: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)   # successful calls only

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        return {
            "mode": self.mode, "level": self.level, "texts_per_call": self.texts_per_call,
            "requests": self.requests, "ok": self.ok, "errors": dict(self.errors),
            "elapsed_s": round(self.elapsed_s, 3),
            "texts_per_s": round(self.texts_ok / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "calls_per_s": round(self.ok / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        }


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


class TextCursor:
    """Hands out consecutive slices of the corpus, wrapping around."""

    def __init__(self, texts: list[str], per_call: int) -> None:
        self.texts, self.per_call, self.pos = texts, per_call, 0

    def next(self) -> list[str]:
        n = len(self.texts)
        out = [self.texts[(self.pos + i) % n] for i in range(self.per_call)]
        self.pos = (self.pos + self.per_call) % n
        return out


async def _timed(call: Call, texts: list[str], start: float, result: PointResult) -> None:
    result.requests += 1
    try:
        await call(texts)
    except Exception as exc:  # every failure is counted, by kind
        result.errors[_error_kind(exc)] += 1
        return
    result.ok += 1
    result.texts_ok += len(texts)
    result.latencies_ms.append((time.perf_counter() - start) * 1000)


async def closed_loop(call: Call, texts: list[str], concurrency: int, per_call: int,
                      duration_s: float, max_requests: int) -> PointResult:
    """`concurrency` callers, each sending its next call when the last one returns."""
    result = PointResult("closed", concurrency, per_call)
    cursor = TextCursor(texts, per_call)
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    last_done = t0

    async def worker() -> None:
        nonlocal last_done
        while time.perf_counter() < stop_at and result.requests < max_requests:
            await _timed(call, cursor.next(), time.perf_counter(), result)
            last_done = time.perf_counter()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = last_done - t0
    return result


async def open_loop(call: Call, texts: list[str], rate: float, per_call: int, duration_s: float,
                    max_requests: int, max_inflight: int = 1024,
                    drain_s: float = 60.0) -> PointResult:
    """Calls start on a fixed schedule (`rate` per second) whatever the answers do; latency is
    measured from the scheduled start (no coordinated omission). A call that would exceed
    `max_inflight` outstanding calls is not sent and counted as `SHED` (the stack is saturated)."""
    result = PointResult("open", rate, per_call)
    cursor = TextCursor(texts, per_call)
    interval = 1.0 / rate
    inflight: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    n = 0
    while n < max_requests:
        if n * interval >= duration_s:
            break
        due = t0 + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n += 1
        if len(inflight) >= max_inflight:
            result.requests += 1
            result.errors["SHED"] += 1
            continue
        task = asyncio.create_task(_timed(call, cursor.next(), due, result))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        _, pending = await asyncio.wait(set(inflight), timeout=drain_s)
        for task in pending:
            task.cancel()
        if pending:
            result.errors["DRAIN_TIMEOUT"] += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
    result.elapsed_s = time.perf_counter() - t0
    return result
