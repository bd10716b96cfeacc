"""Per-caller quotas: a texts-per-second token bucket and a cap on concurrent calls.

State is keyed by the caller's name, so a rotated key keeps its caller's budget. A bucket
may go into debt by one request (a request larger than the bucket is admitted when the
bucket is full), so the retry hint is always reachable: the time until the bucket holds
the request's texts, or, in debt, until it is back to full.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wacht.service.security.errors import QuotaExceeded

# Retry hint when the concurrent-call cap is hit: there is no way to know when a call
# ends, so the hint is one typical short call.
CONCURRENCY_RETRY_S = 0.05


@dataclass
class TokenBucket:
    rate: float  # texts per second
    capacity: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.stamp = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float) -> float:
        """Take `n` tokens and return 0, or take nothing and return the seconds to wait."""
        self._refill()
        need = min(n, self.capacity)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


@dataclass
class CallerQuota:
    max_concurrent: int
    bucket: TokenBucket | None
    active: int = 0


@dataclass
class Quotas:
    clock: Callable[[], float] = time.monotonic
    _state: dict[str, CallerQuota] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _quota(self, name: str, rate: float, burst: float, max_concurrent: int) -> CallerQuota:
        quota = self._state.get(name)
        bucket_changed = quota is not None and (
            (quota.bucket is None) != (rate <= 0)
            or (quota.bucket is not None
                and (quota.bucket.rate, quota.bucket.capacity) != (rate, burst))
        )
        if quota is None or bucket_changed:  # new caller, or its limits were edited
            bucket = TokenBucket(rate, burst, self.clock) if rate > 0 else None
            quota = CallerQuota(max_concurrent, bucket, quota.active if quota else 0)
            self._state[name] = quota
        quota.max_concurrent = max_concurrent
        return quota

    def enter(self, name: str, max_concurrent: int, rate: float = 0, burst: float = 1) -> Ticket:
        """Count one call against `name`'s cap (0 = no cap); release the ticket when done."""
        with self._lock:
            quota = self._quota(name, rate, burst, max_concurrent)
            if max_concurrent and quota.active >= max_concurrent:
                raise QuotaExceeded(
                    f"caller {name!r} has {quota.active} calls running, its limit; "
                    "retry when one finishes",
                    CONCURRENCY_RETRY_S,
                    subject=f"caller:{name}",
                    description=f"at most {max_concurrent} concurrent calls",
                )
            quota.active += 1
            return Ticket(self, name)

    def _leave(self, name: str) -> None:
        with self._lock:
            quota = self._state.get(name)
            if quota is not None and quota.active > 0:
                quota.active -= 1

    def charge(self, name: str, texts: int, rate: float, burst: float) -> None:
        """Take `texts` from `name`'s bucket (rate 0 = no limit) or raise QuotaExceeded."""
        if rate <= 0 or texts <= 0:
            return
        with self._lock:
            quota = self._quota(name, rate, burst, self._state[name].max_concurrent
                                if name in self._state else 0)
            assert quota.bucket is not None
            wait = quota.bucket.take(texts)
        if wait > 0:
            raise QuotaExceeded(
                f"caller {name!r} is over its {rate:g} texts/s; retry in {wait:.3f}s",
                wait,
                subject=f"caller:{name}",
                description=f"{rate:g} texts per second (burst {burst:g})",
            )

    def active(self, name: str) -> int:
        quota = self._state.get(name)
        return quota.active if quota else 0


@dataclass
class Ticket:
    quotas: Quotas | None
    name: str

    def release(self) -> None:
        if self.quotas is not None:
            self.quotas._leave(self.name)
            self.quotas = None
