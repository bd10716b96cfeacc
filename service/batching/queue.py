"""The per-model queue: windows waiting for inference, handed out as batches by padded cost.

One job: keep windows in arrival order and cut the next batch from the front. A batch
closes when one more window would push its padded cost (longest window x count) over the
token budget, or its size over the size limit. Arrival order keeps the queue fair; the
batcher sorts each batch by length afterwards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class QueuedWindow:
    request: Any  # the owner; opaque to the queue
    index: int  # the window's position among its request's windows
    length: int  # tokens, special tokens included
    enqueued: float  # clock time of admission


class WindowQueue:
    def __init__(self) -> None:
        self._items: deque[QueuedWindow] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[QueuedWindow]:
        return iter(self._items)

    def push(self, items: list[QueuedWindow]) -> None:
        self._items.extend(items)

    def discard(self, request: Any) -> int:
        """Drop every queued window of `request`; return how many there were."""
        before = len(self._items)
        self._items = deque(item for item in self._items if item.request is not request)
        return before - len(self._items)

    @property
    def oldest(self) -> float | None:
        """Admission time of the window at the front."""
        return self._items[0].enqueued if self._items else None

    def batch_ready(self, max_tokens: int, max_size: int) -> bool:
        """Whether the queued windows already fill a batch (more than one would fit)."""
        longest = 0
        for count, item in enumerate(self._items, 1):
            longest = max(longest, item.length)
            if count > max_size or (count > 1 and longest * count > max_tokens):
                return True
        return False

    def take(
        self, max_tokens: int, max_size: int, keep: Callable[[QueuedWindow], bool]
    ) -> list[QueuedWindow]:
        """Remove and return the next batch. Windows for which `keep` is false are discarded
        on the way (their requests were cancelled or expired). The first window is always
        taken, even when it alone is over the budget."""
        batch: list[QueuedWindow] = []
        longest = 0
        while self._items:
            item = self._items[0]
            if not keep(item):
                self._items.popleft()
                continue
            grown = max(longest, item.length)
            if batch and (len(batch) >= max_size or grown * (len(batch) + 1) > max_tokens):
                break
            self._items.popleft()
            batch.append(item)
            longest = grown
        return batch
