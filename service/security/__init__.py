"""Transport-neutral security: who is calling (API keys, mTLS identities), what they may
do, and how much (quotas). Every front end (gRPC today, HTTP later) calls the same
functions: `Guard.authenticate(metadata, peer_identity)`, `Guard.authorize(...)`,
`Guard.enter(...)` and `Guard.charge(...)`. Nothing here imports grpc.
"""

from wacht.service.security.errors import (
    PermissionDenied,
    QuotaExceeded,
    SecurityError,
    Unauthenticated,
)
from wacht.service.security.guard import Caller, Guard
from wacht.service.security.keys import KeyStore, generate_key, hash_key

__all__ = [
    "Caller",
    "Guard",
    "KeyStore",
    "PermissionDenied",
    "QuotaExceeded",
    "SecurityError",
    "Unauthenticated",
    "generate_key",
    "hash_key",
]
