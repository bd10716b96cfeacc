"""The per-model queue: windows waiting for inference, handed out fairly as batches by cost.

Windows wait in *flows*, one per call by default (or one per caller, when the batcher is
given a caller key): each flow keeps its windows in arrival order, and the next batch is
cut round-robin across the flows, one window from each in turn. A call of 4,000 windows
therefore holds a one-window call back by about one window per flow, not by its whole
length. A batch closes when one more window would push its padded cost (longest window x
count) over the token budget, or its size over the size limit; the batcher sorts each batch
by length afterwards.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any


@dataclass(eq=False)
class QueuedWindow:
    request: Any  # the owner; opaque to the queue
    index: int  # the window's position among its request's windows
    length: int  # tokens, special tokens included
    enqueued: float  # clock time of admission


class WindowQueue:
    def __init__(self) -> None:
        # flow key -> its windows; the order of the dict is the round-robin order
        self._flows: OrderedDict[Hashable, deque[QueuedWindow]] = OrderedDict()
        self._size = 0
        self._tokens = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[QueuedWindow]:
        """Windows in the order take() would hand them out."""
        return self._round_robin()

    @property
    def tokens(self) -> int:
        """Tokens of the queued windows."""
        return self._tokens

    @property
    def flows(self) -> int:
        """Flows with windows waiting."""
        return len(self._flows)

    def push(self, items: list[QueuedWindow], flow: Hashable | None = None) -> None:
        """Append windows to `flow` (default: each window's request is its own flow)."""
        for item in items:
            key = item.request if flow is None else flow
            queue = self._flows.get(key)
            if queue is None:
                queue = self._flows[key] = deque()
            queue.append(item)
        self._size += len(items)
        self._tokens += sum(item.length for item in items)

    def discard(self, request: Any, flow: Hashable | None = None) -> int:
        """Drop every queued window of `request` (in `flow`, default its own); return how
        many there were."""
        key = request if flow is None else flow
        queue = self._flows.get(key)
        if queue is None:
            return 0
        kept = deque(item for item in queue if item.request is not request)
        removed = len(queue) - len(kept)
        self._tokens -= sum(i.length for i in queue) - sum(i.length for i in kept)
        if kept:
            self._flows[key] = kept
        else:
            del self._flows[key]
        self._size -= removed
        return removed

    @property
    def oldest(self) -> float | None:
        """Admission time of the longest-waiting window at the head of a flow."""
        return min((q[0].enqueued for q in self._flows.values()), default=None)

    def ahead_of(self, windows: int, flow: Hashable | None = None) -> int:
        """Windows served before `windows` more windows would finish under round-robin, as a
        new flow or appended to `flow` (behind its queued windows): an upper bound, each
        flow contributes at most that many."""
        turns = max(1, windows)
        if flow is not None:
            turns += len(self._flows.get(flow, ()))
        return min(self._size, len(self._flows) * turns)

    def _round_robin(self) -> Iterator[QueuedWindow]:
        depth = 0
        while True:
            found = False
            for queue in self._flows.values():
                if depth < len(queue):
                    found = True
                    yield queue[depth]
            if not found:
                return
            depth += 1

    def batch_ready(self, max_tokens: int, max_size: int) -> bool:
        """Whether the queued windows already fill a batch (more than one would fit)."""
        longest = 0
        for count, item in enumerate(islice(self._round_robin(), max_size + 1), 1):
            longest = max(longest, item.length)
            if count > max_size or (count > 1 and longest * count > max_tokens):
                return True
        return False

    def take(
        self, max_tokens: int, max_size: int, keep: Callable[[QueuedWindow], bool]
    ) -> list[QueuedWindow]:
        """Remove and return the next batch, one window per flow in turn. Windows for which
        `keep` is false are discarded on the way (their requests were cancelled or
        expired). The first window is always taken, even when it alone is over the
        budget."""
        batch: list[QueuedWindow] = []
        longest = 0
        while self._flows:
            key, queue = next(iter(self._flows.items()))
            item = queue[0]
            if keep(item):
                grown = max(longest, item.length)
                if batch and (len(batch) >= max_size or grown * (len(batch) + 1) > max_tokens):
                    break
                batch.append(item)
                longest = grown
            queue.popleft()
            self._size -= 1
            self._tokens -= item.length
            if queue:
                self._flows.move_to_end(key)
            else:
                del self._flows[key]
        return batch
