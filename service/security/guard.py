"""The one place that decides who a caller is and what it may do.

    guard = Guard(KeyStore.load(path))          # or Guard(None): no API keys
    caller = guard.authenticate(metadata, peer_identity)   # Unauthenticated
    guard.authorize(caller, "Moderate")                     # PermissionDenied
    ticket = guard.enter(caller)                            # QuotaExceeded (concurrency)
    guard.charge(caller, ["minilm-moderation"], 12)         # PermissionDenied / QuotaExceeded
    ...
    ticket.release()

`metadata` keys are lower case (gRPC metadata; an HTTP front end lower-cases its headers);
`peer_identity` is the verified mTLS client certificate subject, or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wacht.service.security.errors import PermissionDenied, Unauthenticated
from wacht.service.security.keys import CallerEntry, KeyStore
from wacht.service.security.quotas import Quotas, Ticket

ANONYMOUS = "anonymous"  # no keys file, no listed mTLS identity
MTLS = "mtls"  # a verified client certificate that the callers file does not list
AUTHORIZATION = "authorization"
OPEN_ENTRY = CallerEntry(name=ANONYMOUS, subject="*")


@dataclass(frozen=True)
class Caller:
    """Who is calling: `name` is safe for logs and metric labels (a configured name or one
    of the fixed `anonymous` / `mtls`); `identity` is the mTLS subject, if any."""

    name: str
    entry: CallerEntry
    identity: str | None = None
    via: str = "none"  # "key", "mtls" or "none"


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The key of `authorization: Bearer <key>`; None without the header."""
    value = metadata.get(AUTHORIZATION)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization metadata must be `Bearer <API key>`")
    return token.strip()


class Guard:
    def __init__(
        self,
        keys: KeyStore | None,
        *,
        open_methods: Sequence[str] = (),
        quotas: Quotas | None = None,
    ) -> None:
        self.keys = keys
        self.open_methods = frozenset(open_methods)
        self.quotas = quotas or Quotas()

    @property
    def enforcing(self) -> bool:
        return self.keys is not None

    def known_names(self) -> list[str]:
        """Every caller name this guard can report (a bounded label set)."""
        return [ANONYMOUS, MTLS, *(self.keys.names() if self.keys else [])]

    def authenticate(self, metadata: Mapping[str, str], peer_identity: str | None) -> Caller:
        """An API key wins over an mTLS identity; without either, with a callers file
        configured, the call is UNAUTHENTICATED."""
        token = bearer_token(metadata)
        if self.keys is None:
            return Caller(MTLS if peer_identity else ANONYMOUS, OPEN_ENTRY, peer_identity,
                          "mtls" if peer_identity else "none")
        self.keys.maybe_reload()
        if token is not None:
            entry = self.keys.by_key(token)
            if entry is None:
                raise Unauthenticated("unknown API key")
            return Caller(entry.name, entry, peer_identity, "key")
        if peer_identity:
            entry = self.keys.by_subject(peer_identity)
            if entry is not None:
                return Caller(entry.name, entry, peer_identity, "mtls")
            raise Unauthenticated(
                "the client certificate's subject is not a listed caller and no API key "
                "was sent (metadata `authorization: Bearer <key>`)"
            )
        raise Unauthenticated("missing API key: send metadata `authorization: Bearer <key>`")

    def is_open(self, method: str) -> bool:
        return method in self.open_methods

    def authorize(self, caller: Caller, method: str) -> None:
        if not caller.entry.allows_method(method):
            raise PermissionDenied(f"caller {caller.name!r} may not call {method}")

    def enter(self, caller: Caller) -> Ticket:
        entry = caller.entry
        return self.quotas.enter(
            caller.name, entry.max_concurrent_calls, entry.texts_per_second, entry.burst_texts
        )

    def charge(self, caller: Caller, models: Sequence[str], texts: int) -> None:
        """The request reaches `models` with `texts` texts: check the models, then take the
        texts from the caller's bucket."""
        entry = caller.entry
        denied = [m for m in models if not entry.allows_model(m)]
        if denied:
            raise PermissionDenied(
                f"caller {caller.name!r} may not use model(s) {denied}"
                + ("; name an allowed model in the request" if len(models) > 1 else "")
            )
        self.quotas.charge(caller.name, texts, entry.texts_per_second, entry.burst_texts)
