"""A server interceptor for the handlers that do not go through the CallRunner: server
reflection needs a caller unless `auth.open_reflection`; health is always open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from wacht.service.api.calls import metadata_dict, to_api_error
from wacht.service.api.tls import peer_identity
from wacht.service.security import Guard, SecurityError

REFLECTION_PREFIX = "/grpc.reflection."


class ReflectionGate(grpc.aio.ServerInterceptor):
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def _check(self, context: grpc.aio.ServicerContext) -> None:
        caller = self.guard.authenticate(metadata_dict(context), peer_identity(context))
        self.guard.authorize(caller, "ServerReflectionInfo")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if (
            handler is None
            or not details.method.startswith(REFLECTION_PREFIX)
            or not self.guard.enforcing
            or handler.stream_stream is None
        ):
            return handler
        behavior = handler.stream_stream

        async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self._check(context)
            except SecurityError as exc:
                status = to_api_error(exc).to_grpc_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            replies = behavior(requests, context)
            if hasattr(replies, "__aiter__"):
                async for reply in replies:
                    yield reply
            else:
                for reply in await replies if hasattr(replies, "__await__") else replies:
                    yield reply

        return handler._replace(stream_stream=guarded)
