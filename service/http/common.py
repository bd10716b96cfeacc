"""What every HTTP front end shares: reading a JSON body, the call's id and deadline, the
credentials, and the HTTP status of an ApiError. Each API renders errors in its own format;
the calls themselves run through the same CallRunner as gRPC (service/api/calls.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aiohttp import web

from wacht.service.api import errors
from wacht.service.api.calls import REQUEST_ID_KEY, CallRunner
from wacht.service.observability.logging import new_request_id
from wacht.v1 import common_pb2

T = TypeVar("T")
TIMEOUT_HEADER = "X-Server-Timeout"  # seconds, as Google's HTTP APIs take it
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)  # the app's client_max_size

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@dataclass
class HttpFailure(errors.ApiError):
    """An ApiError with an HTTP status of its own (413 for an oversized body)."""

    http_status: int = 400


def http_status(error: errors.ApiError) -> int:
    if isinstance(error, HttpFailure):
        return error.http_status
    return HTTP_STATUS.get(error.code, 500)


def retry_headers(error: errors.ApiError) -> dict[str, str]:
    """`Retry-After` (whole seconds, rounded up) from a RetryInfo detail."""
    from google.rpc import error_details_pb2

    for detail in error.details:
        if isinstance(detail, error_details_pb2.RetryInfo):
            delay = detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
            return {"Retry-After": str(max(1, int(-(-delay // 1))))}
    return {}


def violations(error: errors.ApiError) -> list[tuple[str, str]]:
    from google.rpc import error_details_pb2

    out = []
    for detail in error.details:
        if isinstance(detail, error_details_pb2.BadRequest):
            out.extend((v.field, v.description) for v in detail.field_violations)
    return out


def request_id(request: web.Request) -> str:
    value = request.headers.get(REQUEST_ID_KEY, "")
    return value if 0 < len(value) <= 128 and value.isprintable() else new_request_id()


def deadline(request: web.Request, default_s: float) -> float | None:
    """time.monotonic() deadline from `X-Server-Timeout` (seconds), else the configured one."""
    raw = request.headers.get(TIMEOUT_HEADER)
    seconds = default_s
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 3600:
            raise errors.invalid_argument(
                [(TIMEOUT_HEADER, "expected a number of seconds in (0, 3600]")]
            )
    return time.monotonic() + seconds if seconds > 0 else None


def credentials(request: web.Request) -> list[tuple[str, str]]:
    """The caller's credentials as gRPC-style metadata: `Authorization` as sent, or an API
    key from `?key=` (Perspective) / `X-Api-Key` as `authorization: Bearer KEY`, so that one
    authenticator serves both transports."""
    auth = request.headers.get("Authorization")
    key = request.query.get("key") or request.headers.get("X-Api-Key")
    if auth:
        return [("authorization", auth)]
    if key:
        return [("authorization", f"Bearer {key}")]
    return []


async def read_json(request: web.Request) -> Any:
    """The decoded JSON body; an empty body is `{}`. Oversized → 413, malformed → 400."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app.get(MAX_BODY_BYTES, 0)
        bad = errors.invalid_argument([("", f"request body is larger than {limit} bytes")])
        raise HttpFailure(bad.code, bad.message, bad.details, 413) from None
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.invalid_argument(
            [("", f"request body is not UTF-8 (byte {exc.start})")]
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.invalid_argument(
            [("", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                  f"column {exc.colno}")]
        ) from None


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=dumps(data), status=status, content_type="application/json", headers=headers
    )


class Front:
    """Base of one HTTP API: runs a call through the shared runner, errors in its format."""

    def __init__(self, runner: CallRunner, default_timeout_s: float) -> None:
        self.runner = runner
        self.default_timeout_s = default_timeout_s

    def error_response(self, exc: errors.ApiError, rid: str) -> web.Response:
        raise NotImplementedError

    async def run(
        self,
        request: web.Request,
        method: str,
        body: Callable[[Any], Awaitable[T]],
        render: Callable[[T], web.Response],
        needs_models: bool = True,
    ) -> web.Response:
        """`body(call)` under admission, metrics and the deadline; its result rendered, or its
        error in this API's format. The request id is answered in `X-Request-Id`."""
        rid = request_id(request)
        try:
            try:
                call_deadline = deadline(request, self.default_timeout_s)
            except errors.ApiError as exc:
                return self.error_response(exc, rid)
            result = await self.runner.run(method, rid, call_deadline, body, needs_models,
                                           metadata=dict(credentials(request)))
        except errors.ApiError as exc:
            return self.error_response(exc, rid)
        response = render(result)
        response.headers[REQUEST_ID_KEY] = rid
        return response


def text_inputs(texts: list[str]) -> list[common_pb2.TextInput]:
    return [common_pb2.TextInput(text=t) for t in texts]
