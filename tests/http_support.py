"""Plain HTTP calls for the HTTP listener tests (urllib, the way a shell script would)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def call(
    url: str, body: Any = None, method: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """(status, headers (case-insensitive), decoded JSON or text) of one request; `body`
    bytes go as they are."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method or ("GET" if data is None else "POST"),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            status, raw, got = reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), exc.headers
    text = raw.decode("utf-8")
    kind = got.get("Content-Type", "")
    return status, got, json.loads(text) if kind.startswith("application/json") else text


def violations(body: dict) -> list[tuple[str, str]]:
    """(field, description) of the BadRequest detail of a Google error JSON body."""
    out = []
    for detail in body["error"].get("details", []):
        if detail.get("@type", "").endswith("google.rpc.BadRequest"):
            out.extend((v.get("field", ""), v["description"]) for v in detail["fieldViolations"])
    return out
