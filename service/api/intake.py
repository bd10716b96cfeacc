"""More calls taken in from grpc core at once than grpc.aio's one per method.

grpc.aio (1.85) keeps one call request per registered method outstanding in grpc core: a
method's calls are taken in one at a time, each after a round trip through the event loop.
Under a flood of small calls they pile up in core, where Wacht can neither see nor refuse
them, and the client's deadline passes first (measured, bench/README.md: a 5x short-text
overload got 52% OK or RESOURCE_EXHAUSTED with one request, 100% with four more). `Intake`
keeps `loops` more requests outstanding per method, each loop handing the calls it takes to
grpc's own per-call machinery, so every call is served or refused by Wacht's admission.

The door: a scoring call these loops take in is first shown to `door` (CallRunner.door),
before its message is read or a handler task exists; a call the door refuses gets its status
(RESOURCE_EXHAUSTED with RetryInfo) sent straight away. Refused through a handler, a call cost
about a third of a served one on the event loop, so a flood of the smallest calls outran what
one process could even refuse (bench/README.md). A call that passes the door runs its handler
with `door_pass` set, so the handler does not take the same decision twice.

This uses grpc's private Cython entry points (the ones its own serving loop calls); where
they are missing (another grpc version) the server runs with grpc's one request and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any

import grpc

from wacht.service.api import errors
from wacht.service.observability import loopload
from wacht.service.observability.logging import get_logger

log = get_logger("wacht.intake")


class DoorPass:
    """Set in the handler of a call that passed the door: its admission checks are done."""

    __slots__ = ("entering",)

    def __init__(self) -> None:
        self.entering = True  # not yet at admission (CallRunner counts it as about to queue)


door_pass: contextvars.ContextVar[DoorPass | None] = contextvars.ContextVar(
    "door_pass", default=None
)
# (method path, the call's grpc context) -> None to let it in, or the status to refuse it
# with: (code, details, trailing metadata)
Refusal = tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]
Door = Callable[[str, Any], Refusal | None]

_CYGRPC_NAMES = ("_MethodResolver", "_handle_rpc", "_schedule_rpc_coro")
_SERVER_NAMES = ("_request_registered_call", "is_running")


def _private_api(server: grpc.aio.Server) -> tuple[Any, Any] | None:
    """(cygrpc, the core AioServer), or None where this grpc lacks what Intake needs."""
    try:
        from grpc._cython import cygrpc
    except ImportError:
        return None
    core = getattr(server, "_server", None)
    if core is None or not all(hasattr(cygrpc, n) for n in _CYGRPC_NAMES):
        return None
    if not all(hasattr(core, n) for n in _SERVER_NAMES):
        return None
    return cygrpc, core


class Intake:
    """`loops` extra call requests per method of `handlers` (full method path -> handler)."""

    def __init__(self, loops: int, door: Door | None = None) -> None:
        self.loops = loops
        self.door = door
        self.accepted = 0  # calls taken in by these loops (the rest by grpc's own)
        self.refused = 0  # calls refused at the door
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls: set[asyncio.Task[Any]] = set()  # the loop holds tasks only weakly

    def start(
        self,
        server: grpc.aio.Server,
        handlers: Mapping[str, grpc.RpcMethodHandler],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        door_methods: Collection[str] = (),
    ) -> int:
        """Start the loops on a started server; return how many run. Calls of
        `door_methods` (paths) they take in are shown to the door first."""
        if self.loops <= 0 or not handlers:
            return 0
        api = _private_api(server)
        if api is None:
            log.warning("this grpc version offers no extra call requests; calls are taken "
                        "in one at a time per method", grpc=grpc.__version__)
            return 0
        cygrpc, core = api
        loop = asyncio.get_running_loop()
        for method, handler in handlers.items():
            door = self.door if method in door_methods else None
            if door is not None:
                handler = _marked(handler)
            resolver = cygrpc._MethodResolver([], {method: handler})
            for _ in range(self.loops):
                task = loop.create_task(
                    self._take(cygrpc, core, method, resolver, tuple(interceptors), door),
                    name=f"intake[{method}]",
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(self._tasks)

    async def _take(
        self,
        cygrpc: Any,
        core: Any,
        method: str,
        resolver: Any,
        interceptors: tuple,
        door: Door | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        method_bytes = method.encode()
        while core.is_running():
            try:
                rpc_state = await core._request_registered_call(method_bytes)
            except asyncio.CancelledError:
                raise
            except Exception:  # the server is shutting down: core fails open requests
                return
            self.accepted += 1
            if door is not None:
                context = cygrpc._ServicerContext(rpc_state, None, None, loop)
                refusal = door(method, context)
                if refusal is not None:
                    self.refused += 1
                    self._track(loop.create_task(_refuse(context, refusal)))
                    continue
            rpc = cygrpc._handle_rpc(method, resolver, interceptors, rpc_state, loop, False)
            self._track(loop.create_task(cygrpc._schedule_rpc_coro(rpc, rpc_state, loop, method)))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def close(self) -> None:
        """Stop taking calls in (calls already taken in run on); after the server's stop."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _refuse(context: Any, refusal: Refusal) -> None:
    """Send a call's error status without reading its message (trailers only)."""
    # AbortError once sent; anything else: the call is gone, nobody is left to tell
    with contextlib.suppress(Exception):
        await context.abort(*refusal)


def _marked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with `door_pass` set while its behaviour runs."""
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            door_pass.set(DoorPass())
            return await unary(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            door_pass.set(DoorPass())
            async for reply in stream(request, context):
                yield reply

        return handler._replace(unary_stream=unary_stream)
    return handler  # client streams are not refused at the door


class Saturation:
    """Refuses a share of new scoring calls while the event loop is busier than `max_busy`.

    A saturated loop cannot even take calls in: they wait in grpc core, where neither the
    batchers' wait estimate nor any deadline sees them. Every WINDOW_S the loop's busy
    share is read; once it has been over `max_busy` for STREAK more windows than under it
    (so a burst the loop works off in a moment is served) the admitted share falls by 30% a
    window (down to FLOOR); it rises by 10 points in each window under it, and back to all
    in one at most half as busy. Only callers that sent at least half their fair share of
    the last window's calls are refused (a polite caller beside a flooding one is let in).
    Refused calls get RESOURCE_EXHAUSTED with the time the admitted share needs to come back
    to all. 0 = never.
    """

    WINDOW_S = 0.05
    STREAK = 3
    FLOOR = 0.02

    def __init__(
        self,
        max_busy: float,
        idle_s: Callable[[], float | None] = loopload.idle_s,
        clock: Callable[[], float] = time.perf_counter,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.max_busy = max_busy
        self.admitted = 1.0
        self.busy = 0.0
        self._streak = 0  # windows over max_busy less those under, never below 0
        self._calls: dict[str, int] = {}  # this window's calls by caller
        self._heavy: frozenset[str] = frozenset()  # callers refused while saturated
        self._idle_s, self._clock, self._draw = idle_s, clock, draw
        self._since: tuple[float, float] | None = None  # (clock, idle seconds) at window start

    def check(self, caller: str = "") -> None:
        """Raise ApiError(RESOURCE_EXHAUSTED) for a call refused at the door."""
        if self.max_busy <= 0:
            return
        idle = self._idle_s()
        if idle is None:
            return
        self._calls[caller] = self._calls.get(caller, 0) + 1
        now = self._clock()
        if self._since is None:
            self._since = (now, idle)
            return
        elapsed, waited = now - self._since[0], idle - self._since[1]
        # a window closes after WINDOW_S, or early once the loop has waited so long in it
        # that it cannot end over max_busy (so an idle server lets the next call in)
        if elapsed >= self.WINDOW_S or waited >= (1.0 - self.max_busy) * self.WINDOW_S:
            self.busy = min(1.0, max(0.0, 1.0 - waited / max(elapsed, 1e-9)))
            if self.busy > self.max_busy:
                self._streak += 1
                if self._streak >= self.STREAK:
                    self.admitted = max(self.FLOOR, self.admitted * 0.7)
            elif self.busy <= self.max_busy / 2:  # the flood is over
                self._streak, self.admitted = 0, 1.0
            else:
                self._streak = max(0, self._streak - 1)
                self.admitted = min(1.0, self.admitted + 0.1)
            self._since = (now, idle)
            total, fair = sum(self._calls.values()), 0.5 / len(self._calls)
            self._heavy = frozenset(c for c, n in self._calls.items() if n >= fair * total)
            self._calls = {}
        if self.admitted < 1.0 and caller in self._heavy and self._draw() >= self.admitted:
            retry = max(self.WINDOW_S, (1.0 - self.admitted) / 0.1 * self.WINDOW_S)
            raise errors.resource_exhausted(
                f"the server is saturated taking calls in (event loop {self.busy:.0%} busy, "
                f"admitting {self.admitted:.0%} of calls); retry later",
                retry,
            )
