"""More calls taken in from grpc core at once than grpc.aio's one per method.

grpc.aio (1.85) keeps one call request per registered method outstanding in grpc core: a
method's calls are taken in one at a time, each after a round trip through the event loop.
Under a flood of small calls they pile up in core, where Wacht can neither see nor refuse
them, and the client's deadline passes first (measured, bench/README.md: a 5x short-text
overload got 52% OK or RESOURCE_EXHAUSTED with one request, 100% with four more). `Intake`
keeps `loops` more requests outstanding per method, each loop handing the calls it takes to
grpc's own per-call machinery, so every call is served or refused by Wacht's admission.

This uses grpc's private Cython entry points (the ones its own serving loop calls); where
they are missing (another grpc version) the server runs with grpc's one request and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from wacht.service.observability.logging import get_logger

log = get_logger("wacht.intake")

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

    def __init__(self, loops: int) -> None:
        self.loops = loops
        self.accepted = 0  # calls taken in by these loops (the rest by grpc's own)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls: set[asyncio.Task[Any]] = set()  # the loop holds tasks only weakly

    def start(
        self,
        server: grpc.aio.Server,
        handlers: Mapping[str, grpc.RpcMethodHandler],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> int:
        """Start the loops on a started server; return how many run."""
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
            resolver = cygrpc._MethodResolver([], {method: handler})
            for _ in range(self.loops):
                task = loop.create_task(
                    self._take(cygrpc, core, method, resolver, tuple(interceptors)),
                    name=f"intake[{method}]",
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(self._tasks)

    async def _take(
        self, cygrpc: Any, core: Any, method: str, resolver: Any, interceptors: tuple
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
            rpc = cygrpc._handle_rpc(method, resolver, interceptors, rpc_state, loop, False)
            task = loop.create_task(cygrpc._schedule_rpc_coro(rpc, rpc_state, loop, method))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def close(self) -> None:
        """Stop taking calls in (calls already taken in run on); after the server's stop."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
