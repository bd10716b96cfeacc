"""Register servicers from the service descriptors, with a deserializer that never raises.

grpc's generated `add_*_to_server` answers an undecodable request (for example a string
field holding invalid UTF-8) with a bare INTERNAL. Here such a request reaches the servicer
as `Undecodable`, which becomes INVALID_ARGUMENT naming the field (`texts[2].text`, found by
walking the bytes, see wire.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import DecodeError

from wacht.service.api import errors
from wacht.service.api.wire import find_problem


@dataclass
class Undecodable:
    descriptor: Descriptor
    data: bytes

    def error(self, prefix: str = "") -> errors.ApiError:
        problem = find_problem(self.descriptor, self.data)
        if problem is None or not problem.field:
            where = f" at {problem.field or 'the top level'}: {problem.description}" if problem \
                else ""
            return errors.invalid_argument(
                [(prefix.rstrip("."), f"not a valid {self.descriptor.name} message{where}")]
            )
        return errors.invalid_argument([(prefix + problem.field, problem.description)])


def _deserializer(cls: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError):
            return Undecodable(cls.DESCRIPTOR, data)

    return parse


def _guard_unary(method: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            status = request.error().to_grpc_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        return await method(request, context)

    return handler


def _guard_server_stream(method: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            status = request.error().to_grpc_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        async for item in method(request, context):
            yield item

    return handler


def add_servicer(
    server: grpc.aio.Server, servicer: Any, file: FileDescriptor, service_name: str
) -> tuple[str, dict[str, grpc.RpcMethodHandler]]:
    """Register every method of `service_name` (declared in `file`); return its full name
    and its handlers by method path (`/wacht.v1.Moderation/Moderate`)."""
    service = file.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        impl = getattr(servicer, method.name)
        kwargs = {
            "request_deserializer": _deserializer(request_cls),
            "response_serializer": response_cls.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(impl, **kwargs)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(impl, **kwargs)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _guard_server_stream(impl), **kwargs
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard_unary(impl), **kwargs
            )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name, {f"/{service.full_name}/{m}": h for m, h in handlers.items()}
