"""How busy the event loop is: the share of wall time it spends outside `select`.

`new_event_loop()` makes the server's loop with a selector that clocks its waits; `idle_s()`
gives the running loop's idle seconds so far (None for a loop made elsewhere). The time a
loop is not waiting includes its waits for the GIL, which is what saturates one Python
process under a flood of small calls.
"""

from __future__ import annotations

import asyncio
import selectors
import time
import weakref
from typing import Any

_CLOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IdleClockSelector] = (
    weakref.WeakKeyDictionary()
)


class _IdleClockSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    idle_s = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        started = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            self.idle_s += time.perf_counter() - started


def new_event_loop() -> asyncio.AbstractEventLoop:
    selector = _IdleClockSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _CLOCKS[loop] = selector
    return loop


def idle_s() -> float | None:
    """Seconds the running loop has waited in `select`, or None where it does not clock it."""
    selector = _CLOCKS.get(asyncio.get_running_loop())
    return None if selector is None else selector.idle_s
