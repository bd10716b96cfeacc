"""Security decisions as exceptions; each front end maps `code` to its own status
(gRPC: the code of the same name; HTTP: 401, 403, 429)."""

from __future__ import annotations


class SecurityError(Exception):
    code = "UNAUTHENTICATED"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(SecurityError):
    """No credential, or one the server does not know."""

    code = "UNAUTHENTICATED"


class PermissionDenied(SecurityError):
    """A known caller asked for a method or model its entry does not allow."""

    code = "PERMISSION_DENIED"


class QuotaExceeded(SecurityError):
    """Over the caller's texts/s bucket or concurrent-call cap.

    `subject` and `description` fill a google.rpc.QuotaFailure violation; `retry_after_s`
    is when the same request would be admitted (texts/s), or an estimate (concurrency)."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float, subject: str, description: str):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.subject = subject
        self.description = description
