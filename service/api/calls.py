"""What every RPC shares: admission, request id, deadline, metrics, logs and error mapping."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc

from wacht.service.api import errors
from wacht.service.batching.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from wacht.service.moderation.moderator import InvalidArgument
from wacht.service.observability.logging import bind_request, clear_request, get_logger
from wacht.service.runtime.engine import TextTooLong

if TYPE_CHECKING:
    from wacht.service.api.state import ServingState

T = TypeVar("T")
log = get_logger("wacht.api")
REQUEST_ID_KEY = "x-request-id"


@dataclass
class Call:
    method: str
    request_id: str
    deadline: float | None  # time.monotonic() based, None = no deadline
    started: float

    def elapsed_ns(self) -> int:
        return int((time.monotonic() - self.started) * 1e9)


def to_api_error(exc: BaseException, field_prefix: str = "") -> errors.ApiError:
    """Map an exception from any layer to the error the client sees."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, InvalidArgument):
        return errors.invalid_argument([(field_prefix + exc.field, exc.description)])
    if isinstance(exc, QueueFull):
        return errors.resource_exhausted(
            "the batch queue is full; retry later", getattr(exc, "retry_after_s", 0.1)
        )
    if isinstance(exc, DeadlineExceeded):
        return errors.deadline_exceeded()
    if isinstance(exc, BatcherClosed):
        return errors.unavailable("the server is shutting down")
    if isinstance(exc, TextTooLong):
        return errors.invalid_argument(
            [
                (
                    f"{field_prefix}texts[{exc.index}].text",
                    f"{exc.tokens} tokens do not fit one window of {exc.limit} "
                    "(truncation is REJECT)",
                )
            ]
        )
    log.error("unhandled error", exc_info=exc)
    return errors.internal()


def _loggable(error: errors.ApiError) -> dict[str, object]:
    """What the log may say about an error: messages about bad fields quote client-chosen
    names (policies, models, tasks), so for those only the field paths are logged."""
    from google.rpc import error_details_pb2

    bad = [d for d in error.details if isinstance(d, error_details_pb2.BadRequest)]
    if not bad and error.code != grpc.StatusCode.INVALID_ARGUMENT:
        return {"error": error.message}
    return {"fields": [_field_path(v.field) for d in bad for v in d.field_violations][:10]}


_SEGMENT = re.compile(r"([^.\[\]]*)((?:\[[^\]]*\])*)")


def _field_path(path: str) -> str:
    """A field path for the log: names that are identifiers and numeric indexes stay, any
    other segment or map key (client-chosen, e.g. `threshold_overrides[<key>]`) becomes a
    sha256 prefix."""
    def safe(part: str) -> str:
        if IDENTIFIER.fullmatch(part):
            return part
        return "#" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:8]

    out = []
    for name, keys in _SEGMENT.findall(path):
        if not name and not keys:
            continue
        out.append(safe(name) + "".join(f"[{safe(k)}]" for k in re.findall(r"\[([^\]]*)\]", keys)))
    return ".".join(out)


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}|\d{1,9}")


def _cancel_code(call: Call | None) -> grpc.StatusCode:
    """grpc cancels the handler both when the client goes away and when the deadline passes."""
    if call is not None and call.deadline is not None and time.monotonic() >= call.deadline:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _abort(
    context: grpc.aio.ServicerContext, error: errors.ApiError, call: Call | None
) -> None:
    status = error.to_grpc_status()
    metadata = tuple(status.trailing_metadata)
    if call is not None:
        metadata += ((REQUEST_ID_KEY, call.request_id),)
    await context.abort(status.code, status.details, metadata)


class CallRunner:
    """Runs servicer bodies with the shared bookkeeping; one per server."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def _begin(self, method: str, context: grpc.aio.ServicerContext, needs_models: bool) -> Call:
        call = Call(method, _request_id(context), _deadline(context), time.monotonic())
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        self._admit(call, needs_models)
        return call

    def _admit(self, call: Call, needs_models: bool) -> None:
        bind_request(call.request_id, call.method)
        admission = self.state.admission_error(needs_models)
        if admission is not None:
            raise admission

    def _finish(
        self, call: Call | None, method: str, code: grpc.StatusCode, started: float
    ) -> None:
        seconds = time.monotonic() - started
        self.state.metrics.request_done(method, code.name, seconds)
        log.debug("call done", code=code.name, ms=round(seconds * 1000, 2))
        clear_request()

    async def run(
        self,
        method: str,
        request_id: str,
        deadline: float | None,
        body: Callable[[Call], Awaitable[T]],
        needs_models: bool = True,
    ) -> T:
        """One unary call, whatever the transport: admission, metrics, logs; any failure is
        raised as the ApiError the client sees. gRPC (`unary`) and HTTP (service/http) both
        run their calls here."""
        started = time.monotonic()
        code = grpc.StatusCode.OK
        call = Call(method, request_id, deadline, started)
        self.state.call_started()
        try:
            try:
                self._admit(call, needs_models)
                return await body(call)
            except asyncio.CancelledError:
                code = _cancel_code(call)
                raise
            except Exception as exc:
                error = to_api_error(exc)
                code = error.code
                if code != grpc.StatusCode.INTERNAL:
                    log.info("call failed", code=code.name, **_loggable(error))
            raise error
        finally:
            self.state.call_finished()
            self._finish(call, method, code, started)

    async def unary(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[Call], Awaitable[T]],
        needs_models: bool = True,
    ) -> T:
        request_id = _request_id(context)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        try:
            return await self.run(method, request_id, _deadline(context), body, needs_models)
        except errors.ApiError as error:
            status = error.to_grpc_status()
            metadata = (*status.trailing_metadata, (REQUEST_ID_KEY, request_id))
            await context.abort(status.code, status.details, metadata)
            raise AssertionError("unreachable") from None  # abort raises

    async def streaming(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[Call], AsyncIterator[T]],
    ) -> AsyncIterator[T]:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        call = None
        self.state.call_started()
        try:
            try:
                call = self._begin(method, context, True)
                async for item in body(call):
                    yield item
                    bind_request(call.request_id, method)
                return
            except asyncio.CancelledError:
                code = _cancel_code(call)
                raise
            except Exception as exc:
                error = to_api_error(exc)
                code = error.code
                if code != grpc.StatusCode.INTERNAL:
                    log.info("call failed", code=code.name, **_loggable(error))
            await _abort(context, error, call)
        finally:
            self.state.call_finished()
            self._finish(call, method, code, started)
