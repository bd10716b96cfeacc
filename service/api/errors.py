"""Errors as gRPC statuses with google.rpc details (BadRequest, RetryInfo)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


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
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_grpc_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_status_proto())


def invalid_argument(violations: list[tuple[str, str]]) -> ApiError:
    """INVALID_ARGUMENT listing (field path, description) pairs as BadRequest violations."""
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )
    summary = "; ".join(f"{f}: {d}" for f, d in violations[:5])
    if len(violations) > 5:
        summary += f"; and {len(violations) - 5} more"
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, summary, [bad])


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
