"""The callers file: API keys (stored as sha256 only) and mTLS identities, with their rights.

    callers:
      - name: web-frontend            # shown in logs and the `caller` metric label
        key_sha256: [3f5a...]         # one or more: rotation = add the new hash, roll the
                                      # clients, remove the old one (no restart)
        methods: [Moderate, ModerateStream, ListPolicies, ListCategories]  # default: all
        models: ["*"]                 # model names (fnmatch patterns); default: all
        texts_per_second: 200         # token bucket; 0 = no limit
        burst_texts: 400              # bucket size; default max(texts_per_second, 1)
        max_concurrent_calls: 16      # 0 = no limit
      - name: batch-job
        subject: "CN=batch-job,O=Example"   # an mTLS client certificate subject

YAML or JSON. The file is re-read when its mtime or size changes (checked at most once per
`check_interval_s`, on the call path) or on `reload()` (SIGHUP); a file that does not parse
keeps the previous callers and logs why. Keys are random (`generate_key`), so one sha256 is
an adequate hash; every lookup compares the presented key's hash with every stored hash in
constant time (hmac.compare_digest, no early exit).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from wacht.service.observability.logging import get_logger

log = get_logger("wacht.security")
KEY_PREFIX = "wacht_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HEX_RE = re.compile(r"^[0-9a-f]{64}$")
# Method names a caller entry may list (short names, as every front end reports them).
METHODS = (
    "Moderate",
    "ModerateStream",
    "Explain",
    "ListPolicies",
    "ListCategories",
    "Analyze",
    "ListModels",
    "GetModelInfo",
    "ServerReflectionInfo",
)


def generate_key() -> str:
    """A new API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeysFileError(ValueError):
    """The callers file is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class CallerEntry:
    name: str
    key_hashes: tuple[str, ...] = ()
    subject: str = ""
    methods: tuple[str, ...] = ("*",)
    models: tuple[str, ...] = ("*",)
    texts_per_second: float = 0.0
    burst_texts: float = 0.0
    max_concurrent_calls: int = 0

    def allows_method(self, method: str) -> bool:
        return any(fnmatchcase(method, pattern) for pattern in self.methods)

    def allows_model(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise KeysFileError(f"{where}: expected a list of non-empty strings")
    return tuple(value)


def _number(raw: Mapping[str, Any], key: str, where: str) -> float:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise KeysFileError(f"{where}.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def parse_entry(raw: Any, where: str) -> CallerEntry:
    if not isinstance(raw, Mapping):
        raise KeysFileError(f"{where}: expected a mapping")
    known = {
        "name", "key_sha256", "subject", "methods", "models",
        "texts_per_second", "burst_texts", "max_concurrent_calls",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise KeysFileError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise KeysFileError(f"{where}.name: expected 1-63 of [A-Za-z0-9._-], got {name!r}")
    hashes = _strings(raw.get("key_sha256", []), f"{where}.key_sha256") if "key_sha256" in raw \
        else ()
    for i, h in enumerate(hashes):
        if not HEX_RE.match(h):
            raise KeysFileError(f"{where}.key_sha256[{i}]: expected 64 lower-case hex digits")
    subject = raw.get("subject", "")
    if not isinstance(subject, str):
        raise KeysFileError(f"{where}.subject: expected a string")
    if not hashes and not subject:
        raise KeysFileError(f"{where}: needs key_sha256 or subject")
    methods = _strings(raw.get("methods", ["*"]), f"{where}.methods")
    for i, method in enumerate(methods):
        if not any(fnmatchcase(m, method) for m in METHODS):
            raise KeysFileError(
                f"{where}.methods[{i}]: {method!r} matches no method; methods: {list(METHODS)}"
            )
    rate = _number(raw, "texts_per_second", where)
    burst = _number(raw, "burst_texts", where) or max(rate, 1.0)
    concurrent = _number(raw, "max_concurrent_calls", where)
    if concurrent != int(concurrent):
        raise KeysFileError(f"{where}.max_concurrent_calls: expected an integer")
    return CallerEntry(
        name=name,
        key_hashes=hashes,
        subject=subject,
        methods=methods,
        models=_strings(raw.get("models", ["*"]), f"{where}.models"),
        texts_per_second=rate,
        burst_texts=burst,
        max_concurrent_calls=int(concurrent),
    )


def parse_callers(data: Any, source: str) -> list[CallerEntry]:
    if data is None:
        data = {}
    if not isinstance(data, Mapping) or set(data) - {"callers"}:
        raise KeysFileError(f"{source}: expected a mapping with one key, `callers`")
    raw = data.get("callers") or []
    if not isinstance(raw, list):
        raise KeysFileError(f"{source}: callers: expected a list")
    entries = [parse_entry(item, f"{source}: callers[{i}]") for i, item in enumerate(raw)]
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if entry.name in seen:
            raise KeysFileError(f"{source}: callers[{i}].name: {entry.name!r} appears twice")
        seen[entry.name] = entry.name
        for h in entry.key_hashes:
            if h in seen:
                raise KeysFileError(f"{source}: callers[{i}]: a key hash appears twice")
            seen[h] = entry.name
    return entries


def read_callers(path: Path) -> list[CallerEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise KeysFileError(f"{path}: invalid YAML/JSON: {exc}") from exc
    return parse_callers(data, str(path))


@dataclass
class KeyStore:
    """The callers of one file, re-read when it changes."""

    path: Path
    check_interval_s: float = 1.0
    entries: list[CallerEntry] = field(default_factory=list)
    _stamp: tuple[int, int] = (0, 0)
    _checked: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: Path, check_interval_s: float = 1.0) -> KeyStore:
        store = cls(path, check_interval_s)
        store.entries = read_callers(path)
        store._stamp = store._file_stamp()
        store._checked = time.monotonic()
        log.info("callers loaded", file=str(path), callers=[e.name for e in store.entries])
        return store

    def _file_stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return
        self._checked = now
        if self._file_stamp() != self._stamp:
            self.reload()

    def reload(self) -> bool:
        """Re-read the file; on an error keep the current callers. True when reloaded."""
        with self._lock:
            stamp = self._file_stamp()
            try:
                entries = read_callers(self.path)
            except KeysFileError as exc:
                self._stamp = stamp  # do not retry a broken file on every call
                log.error("callers file rejected; keeping the previous callers", error=str(exc))
                return False
            self.entries = entries
            self._stamp = stamp
            log.info("callers reloaded", file=str(self.path), callers=[e.name for e in entries])
            return True

    def by_key(self, key: str) -> CallerEntry | None:
        """The entry whose stored hash matches `key`; every stored hash is compared."""
        presented = hash_key(key).encode()
        found = None
        for entry in self.entries:
            for stored in entry.key_hashes:
                if hmac.compare_digest(presented, stored.encode()) and found is None:
                    found = entry
        return found

    def by_subject(self, subject: str) -> CallerEntry | None:
        for entry in self.entries:
            if entry.subject and hmac.compare_digest(entry.subject.encode(), subject.encode()):
                return entry
        return None

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def add_caller(path: Path, entry: dict[str, Any]) -> None:
    """Append (or, for a known name, add a key hash to) an entry in a callers file."""
    data: Any = {}
    if path.exists():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parse_callers(data, str(path))
    callers = list(data.get("callers") or [])
    for existing in callers:
        if existing.get("name") == entry["name"]:
            hashes = existing.get("key_sha256", [])
            existing["key_sha256"] = [*([hashes] if isinstance(hashes, str) else hashes),
                                      *entry.get("key_sha256", [])]
            break
    else:
        callers.append(entry)
    data = {"callers": callers}
    parse_callers(data, str(path))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomic: a server never reads half a file
