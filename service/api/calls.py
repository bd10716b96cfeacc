"""What every RPC shares: admission, request id, deadline, metrics, logs and error mapping."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from wacht.service.api import errors
from wacht.service.api.intake import Refusal, Saturation, door_pass
from wacht.service.api.tls import peer_identity
from wacht.service.batching.batcher import (
    BatcherClosed,
    CallTooLarge,
    DeadlineExceeded,
    QueueFull,
)
from wacht.service.moderation.moderator import InvalidArgument
from wacht.service.observability.logging import (
    bind_request,
    clear_request,
    get_logger,
    new_request_id,
)
from wacht.service.runtime.engine import TextTooLong
from wacht.service.security import (
    Caller,
    Guard,
    PermissionDenied,
    QuotaExceeded,
    SecurityError,
    Unauthenticated,
)
from wacht.service.security.guard import ANONYMOUS, MTLS, OPEN_ENTRY
from wacht.service.security.quotas import Ticket

if TYPE_CHECKING:
    from wacht.service.api.state import ServingState

T = TypeVar("T")
log = get_logger("wacht.api")
REQUEST_ID_KEY = "x-request-id"
# A client's x-request-id is kept (it is the key that ties its logs to ours) only in this
# shape; anything else is replaced by a fresh id, so logs never carry free client text.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNAUTHENTICATED = "unauthenticated"  # the caller label of calls that failed authentication
# The gRPC methods that score texts: refused at once while the server is overloaded
# (saturation, estimated wait), at Intake's door where it takes them in, else in `_begin`.
SHEDDING = frozenset({"Moderate", "Explain", "Analyze"})
ENTERING_S = 1.0  # a call let in by the door counts as about to queue for at most this long
Admitter = Callable[["Call", Sequence[str], int], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _admit_anything(call: Call, models: Sequence[str], texts: int) -> Iterator[None]:
    yield


@dataclass
class Call:
    method: str
    request_id: str
    deadline: float | None  # time.monotonic() based, None = no deadline
    started: float
    # Who is calling (its `name` is what a batcher's per-caller fairness keys on).
    caller: Caller = field(default_factory=lambda: Caller(ANONYMOUS, OPEN_ENTRY))
    admitter: Admitter = _admit_anything
    ticket: Ticket | None = None  # the caller's concurrent-call slot, released at the end

    def elapsed_ns(self) -> int:
        return int((time.monotonic() - self.started) * 1e9)

    @property
    def flow(self) -> str:
        return flow_of(self.caller)

    def admit(self, models: Sequence[str], texts: int) -> contextlib.AbstractContextManager[None]:
        """Before scoring: may the caller use `models`, and has it `texts` texts/s left?
        (PermissionDenied / QuotaExceeded). While the block runs the texts are in flight."""
        return self.admitter(self, models, texts)


def flow_of(caller: Caller) -> str:
    """The batcher's fair-queueing key: a named caller's calls share one flow (served in
    turn with other callers'), unnamed callers' calls are each their own flow."""
    return "" if caller.name in (ANONYMOUS, MTLS) else caller.name


def to_api_error(exc: BaseException, field_prefix: str = "") -> errors.ApiError:
    """Map an exception from any layer to the error the client sees."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, QuotaExceeded):
        return errors.quota_exceeded(exc.message, exc.retry_after_s, exc.subject, exc.description)
    if isinstance(exc, PermissionDenied):
        return errors.ApiError(grpc.StatusCode.PERMISSION_DENIED, exc.message)
    if isinstance(exc, Unauthenticated | SecurityError):
        return errors.ApiError(grpc.StatusCode.UNAUTHENTICATED, exc.message)
    if isinstance(exc, InvalidArgument):
        return errors.invalid_argument([(field_prefix + exc.field, exc.description)])
    if isinstance(exc, QueueFull):
        return errors.resource_exhausted(f"{exc.reason}; retry later", exc.retry_after_s)
    if isinstance(exc, CallTooLarge):
        return errors.invalid_argument([(f"{field_prefix}texts", str(exc))])
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


def _cancel_code(call: Call | None) -> grpc.StatusCode:
    """grpc cancels the handler both when the client goes away and when the deadline passes."""
    if call is not None and call.deadline is not None and time.monotonic() >= call.deadline:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _request_id(context: grpc.aio.ServicerContext) -> str:
    return request_id_of(metadata_dict(context))


def request_id_of(metadata: Mapping[str, str]) -> str:
    """The client's x-request-id where it has the allowed shape, else a fresh id."""
    value = metadata.get(REQUEST_ID_KEY)
    return value if value is not None and REQUEST_ID.fullmatch(value) else new_request_id()


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def log_failure(error: errors.ApiError, **extra: object) -> None:
    """One info line per failed call: the code, and for a bad request the field paths
    (map keys as hashes), never the message (it quotes the client's values)."""
    if error.code == grpc.StatusCode.INTERNAL:
        return  # logged with its traceback where it was raised
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # under overload these come by the thousand a second: counted in the metrics
        log.debug("call failed", code=error.code.name, error=error.message, **extra)
    else:
        # NOT_FOUND and the like quote the name the client sent: the code and the field
        # paths only
        log.info("call failed", code=error.code.name, fields=errors.log_fields(error), **extra)


async def _abort(
    context: grpc.aio.ServicerContext, error: errors.ApiError, call: Call | None
) -> None:
    status = error.to_grpc_status()
    metadata = tuple(status.trailing_metadata)
    if call is not None:
        metadata += ((REQUEST_ID_KEY, call.request_id),)
    await _send_status(context, status.code, status.details, metadata)


async def _send_status(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str, metadata: tuple
) -> None:
    try:
        await context.abort(code, details, metadata)
    except grpc.aio.AbortError:
        raise
    except Exception:
        # The call is already gone (the client cancelled or its deadline passed), so core
        # refuses to send the status: nobody is left to tell. Ending as a cancellation keeps
        # grpc from logging the refusal as an unexpected servicer error.
        raise asyncio.CancelledError from None


def metadata_dict(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


class CallRunner:
    """Runs servicer bodies with the shared bookkeeping; one per server."""

    def __init__(self, state: ServingState, guard: Guard | None = None) -> None:
        self.state = state
        self.guard = guard or Guard(None)
        self.saturation = Saturation(state.config.max_loop_busy)
        # only a verified client certificate (mTLS) names a peer; reading the auth context
        # was a tenth of the event loop's time under a flood of small calls
        self._mtls = state.config.tls.client_ca_file is not None
        # when each call the door let in passed it, until its handler reaches admission:
        # those calls are about to queue, and the door counts them as ahead of the next
        self._entering: collections.deque[float] = collections.deque()

    def _peer(self, context: grpc.aio.ServicerContext) -> str | None:
        return peer_identity(context) if self._mtls else None

    def _identify(self, method: str, context: grpc.aio.ServicerContext) -> Call:
        """Request id and caller (Unauthenticated raises here: the call has no caller)."""
        request_id = _request_id(context)
        bind_request(request_id, method)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        caller = self.guard.authenticate(metadata_dict(context), self._peer(context))
        bind_request(request_id, method, caller.name)
        return Call(method, request_id, _deadline(context), time.monotonic(), caller,
                    self._admit)

    def _begin(self, call: Call, needs_models: bool, sheds: bool = False) -> None:
        """May this caller call this method now (rights, server state, estimated wait,
        concurrent calls)?"""
        self.guard.authorize(call.caller, call.method)
        admission = self.state.admission_error(needs_models)
        if admission is not None:
            raise admission
        if sheds and door_pass.get() is None:
            self._shed(call.caller, call.deadline)
        call.ticket = self.guard.enter(call.caller)

    def _shed(self, caller: Caller, deadline: float | None, entering: int = 0) -> None:
        """Refuse a scoring call before any work on it while the event loop is saturated or
        no batcher could take it in time (ApiError / Overloaded; `entering`: calls let in
        just before it, not queued yet)."""
        self.saturation.check(caller.name)
        self.state.shed(deadline, flow_of(caller), entering)

    def _entered(self) -> None:
        """A call the door let in has reached admission or ended (the oldest pass is its,
        or one whose handler never ran)."""
        passed = door_pass.get()
        if passed is not None and passed.entering:
            passed.entering = False
            if self._entering:
                self._entering.popleft()

    def door(self, method: str, context: Any) -> Refusal | None:
        """Intake's door for a call of a SHEDDING method (its path), before its message is
        read: `_shed`'s refusal, counted and sent without a handler. Anything else (no
        caller, no right, not serving) is let in, for the handler to answer precisely; a
        call let in counts as entering until its handler reaches admission."""
        started = time.monotonic()
        entering = self._entering
        while entering and started - entering[0] > ENTERING_S:
            entering.popleft()  # its handler never ran (the client went away first)
        refusal = self._refusal(method, context, started)
        if refusal is None:
            entering.append(started)
        return refusal

    def _refusal(self, method: str, context: Any, started: float) -> Refusal | None:
        if self.state.admission_error(True) is not None:
            return None
        name = method.rsplit("/", 1)[-1]
        metadata = metadata_dict(context)
        try:
            caller = self.guard.authenticate(metadata, self._peer(context))
            self.guard.authorize(caller, name)
            self._shed(caller, _deadline(context), len(self._entering))
            return None
        except SecurityError:
            return None
        except (errors.ApiError, QueueFull) as exc:
            error = to_api_error(exc)
        request_id = request_id_of(metadata)
        log_failure(error)
        self._finish(Call(name, request_id, None, started, caller), name, error.code, started)
        status = error.to_grpc_status()
        return status.code, status.details, (
            *status.trailing_metadata, (REQUEST_ID_KEY, request_id))

    @contextlib.contextmanager
    def _admit(self, call: Call, models: Sequence[str], texts: int) -> Iterator[None]:
        self._entered()
        self.guard.charge(call.caller, models, texts)
        metrics = self.state.metrics
        metrics.caller_texts.labels(call.caller.name).inc(texts)
        metrics.inflight_texts.inc(texts)
        try:
            yield
        finally:
            metrics.inflight_texts.dec(texts)

    def _finish(
        self, call: Call | None, method: str, code: grpc.StatusCode, started: float
    ) -> None:
        self._entered()
        seconds = time.monotonic() - started
        metrics = self.state.metrics
        metrics.request_done(method, code.name, seconds)
        caller = call.caller.name if call is not None else UNAUTHENTICATED
        metrics.caller_requests.labels(caller, code.name).inc()
        if call is not None and call.ticket is not None:
            call.ticket.release()
        log.debug("call done", code=code.name, ms=round(seconds * 1000, 2))
        clear_request()

    async def run(
        self,
        method: str,
        request_id: str,
        deadline: float | None,
        body: Callable[[Call], Awaitable[T]],
        needs_models: bool = True,
        sheds: bool = False,
        metadata: Mapping[str, str] | None = None,
        peer: str | None = None,
    ) -> T:
        """One unary call, whatever the transport: authentication, admission (`sheds`: the
        call scores texts, so it is refused at once while the batchers are overloaded, see
        ServingState.shed), metrics, logs; any failure is raised as the ApiError the client
        sees. gRPC (`unary`) and HTTP (service/http) both run their calls here. `metadata`
        and `peer`: the caller's credentials (gRPC metadata, or HTTP headers as metadata)."""
        started = time.monotonic()
        code = grpc.StatusCode.OK
        call: Call | None = None
        bind_request(request_id, method)
        generation = self.state.call_started()
        self.state.metrics.inflight_calls.inc()
        try:
            try:
                caller = self.guard.authenticate(dict(metadata or {}), peer)
                bind_request(request_id, method, caller.name)
                call = Call(method, request_id, deadline, started, caller, self._admit)
                self._begin(call, needs_models, sheds)
                return await body(call)
            except asyncio.CancelledError:
                code = _cancel_code(call)
                raise
            except Exception as exc:
                error = to_api_error(exc)
                code = error.code
                log_failure(error)
            raise error
        finally:
            self.state.call_finished(generation)
            self.state.metrics.inflight_calls.dec()
            self._finish(call, method, code, started)

    async def unary(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[Call], Awaitable[T]],
        needs_models: bool = True,
    ) -> T:
        metadata = metadata_dict(context)
        request_id = request_id_of(metadata)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        try:
            return await self.run(method, request_id, _deadline(context), body, needs_models,
                                  method in SHEDDING, metadata, self._peer(context))
        except errors.ApiError as error:
            status = error.to_grpc_status()
            metadata = (*status.trailing_metadata, (REQUEST_ID_KEY, request_id))
            await _send_status(context, status.code, status.details, metadata)
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
        generation = self.state.call_started()
        self.state.metrics.inflight_calls.inc()
        try:
            try:
                call = self._identify(method, context)
                self._begin(call, True, method in SHEDDING)
                async for item in body(call):
                    yield item
                    bind_request(call.request_id, method, call.caller.name)
                if context.cancelled():  # the client went away: its reads simply ended
                    code = _cancel_code(call)
                return
            except (asyncio.CancelledError, GeneratorExit):
                # grpc closes the response generator (GeneratorExit at the yield) when the
                # client cancels a stream, or cancels the handler task
                code = _cancel_code(call)
                raise
            except Exception as exc:
                error = to_api_error(exc)
                code = error.code
                log_failure(error)
            await _abort(context, error, call)
        finally:
            self.state.call_finished(generation)
            self.state.metrics.inflight_calls.dec()
            self._finish(call, method, code, started)
