"""Errors as gRPC statuses with google.rpc details (BadRequest, RetryInfo).

Every error must reach the client as itself: its trailers (grpc-message and the
grpc-status-details-bin Status, base64) have to fit the client's metadata limit (grpc's
default is 16 KiB), however long the values a request echoes. So messages and details are
bounded here, whatever built them: at most MAX_VIOLATIONS field violations (the count of the
rest in the message), each field path and description clipped, the message clipped.
Callers quote client values with `observability.redact.shown` (a few hundred bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from wacht.service.moderation.taxonomy import CATEGORIES
from wacht.service.observability.redact import clip, loggable_path

MAX_VIOLATIONS = 16
MAX_FIELD_BYTES = 256
MAX_DESCRIPTION_BYTES = 512
MAX_MESSAGE_BYTES = 1024


@dataclass
class ApiError(Exception):
    """An error the client should see, with its code and structured details."""

    code: grpc.StatusCode
    message: str
    details: list[Message] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status_proto(self) -> status_pb2.Status:
        packed = []
        for detail in self.details:
            wrapped = any_pb2.Any()
            wrapped.Pack(detail)
            packed.append(wrapped)
        return status_pb2.Status(
            code=self.code.value[0], message=clip(self.message, MAX_MESSAGE_BYTES), details=packed
        )

    def to_grpc_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_status_proto())


def invalid_argument(violations: list[tuple[str, str]]) -> ApiError:
    """INVALID_ARGUMENT listing (field path, description) pairs as BadRequest violations:
    the first MAX_VIOLATIONS of them (the message says how many there were)."""
    kept = [
        (clip(f, MAX_FIELD_BYTES), clip(d, MAX_DESCRIPTION_BYTES))
        for f, d in violations[:MAX_VIOLATIONS]
    ]
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in kept
        ]
    )
    summary = "; ".join(f"{f}: {d}" for f, d in kept[:3])
    if len(violations) > 3:
        summary += f"; and {len(violations) - 3} more"
    if len(violations) > MAX_VIOLATIONS:
        summary += f" ({MAX_VIOLATIONS} of {len(violations)} listed in the details)"
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, clip(summary, MAX_MESSAGE_BYTES), [bad])


def log_fields(error: ApiError) -> list[str]:
    """The field paths of an INVALID_ARGUMENT for a log line, map keys (client-chosen)
    replaced by their sha256 prefix unless they are indices or known categories."""
    out: list[str] = []
    for detail in error.details:
        if isinstance(detail, error_details_pb2.BadRequest):
            out.extend(loggable_path(v.field, CATEGORIES) for v in detail.field_violations)
    return out


def resource_exhausted(message: str, retry_after_s: float) -> ApiError:
    delay = duration_pb2.Duration()
    seconds = max(retry_after_s, 0.001)
    delay.seconds = int(seconds)
    delay.nanos = int(math.modf(seconds)[0] * 1e9)
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        [error_details_pb2.RetryInfo(retry_delay=delay)],
    )


def quota_exceeded(
    message: str, retry_after_s: float, subject: str, description: str
) -> ApiError:
    """RESOURCE_EXHAUSTED with RetryInfo and a google.rpc.QuotaFailure violation."""
    error = resource_exhausted(message, retry_after_s)
    error.details.append(
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)
            ]
        )
    )
    return error


def deadline_exceeded(message: str = "deadline exceeded before the texts were scored") -> ApiError:
    return ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def unavailable(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str = "internal error; see the server log") -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, message)


def status_code_name(code: int) -> str:
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else str(code)
