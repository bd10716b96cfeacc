"""What a client-chosen value may look like when Wacht repeats it.

Two audiences, two rules:
- **Errors** (`shown`): the caller sent the value, so it may see it again, but never more
  than a few hundred bytes of it: an error's trailers must fit the client's metadata limit
  (16 KiB by default in grpc), however long the name it complains about.
- **Logs** (`fingerprint`): never the value itself (names and ids are chosen by clients and
  may carry personal data), only a sha256 prefix and the length, like texts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container
from typing import Any

SHOWN_BYTES = 200  # at most this many UTF-8 bytes of a value in an error message


def _clip(value: str, limit: int) -> str:
    """The longest prefix of `value` whose UTF-8 encoding fits `limit` bytes."""
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return value
    return encoded[:limit].decode("utf-8", "ignore")


def clip(value: str, limit: int) -> str:
    """`value` cut to at most `limit` UTF-8 bytes, marked with … when cut (the backstop for
    whole messages; single values are quoted with `shown`)."""
    clipped = _clip(value, limit - 3)
    return value if byte_length(value) <= limit else clipped + "…"


def byte_length(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def shown(value: str, limit: int = SHOWN_BYTES) -> str:
    """`value` quoted for an error message; past `limit` bytes cut, with its full length:
    'abc' or 'abcd…' (6144 bytes)."""
    clipped = _clip(value, limit)
    if clipped == value:
        return repr(value)
    return f"{clipped!r}… ({byte_length(value)} bytes)"


def path_key(value: str, limit: int = 64) -> str:
    """A map key as it appears inside a field path (`threshold_overrides[KEY]`): as is when
    short and free of brackets, else cut to `limit` bytes and marked with `…`."""
    clean = value.replace("[", "(").replace("]", ")")
    clipped = _clip(clean, limit)
    return clipped if clipped == value else f"{clipped}…"


def fingerprint(value: str) -> dict[str, Any]:
    """What a log line may say about a client-chosen string: sha256 prefix and length."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return {"sha256": digest, "length": len(value)}


_KEY = re.compile(r"\[([^\[\]]*)\]")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}|\d{1,9}")


def loggable_path(path: str, known: Container[str] = ()) -> str:
    """A field path for a log line: `[3]` and known keys as is, any other map key (chosen
    by the client) as `[#<sha256 prefix>/<length>]`."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key.isdigit() or key in known:
            return match.group(0)
        info = fingerprint(key)
        return f"[#{info['sha256'][:8]}/{info['length']}]"

    def segment(part: str) -> str:
        # dotted segments (JSON paths such as requestedAttributes.NAME) are field names
        # unless they are not identifiers, i.e. keys the client made up
        if not part or _IDENTIFIER.fullmatch(part) or part.startswith("[#"):
            return part
        info = fingerprint(part)
        return f"#{info['sha256'][:8]}/{info['length']}"

    bracketed = _KEY.sub(replace, path)
    pieces = re.split(r"(\[[^\]]*\])", bracketed)
    return "".join(p if p.startswith("[") else ".".join(segment(x) for x in p.split("."))
                   for p in pieces)
