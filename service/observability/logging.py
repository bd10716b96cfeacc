"""structlog JSON logging with a request id bound per call; texts logged by hash only."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import sys
from typing import Any

import structlog

_raw_text = False


def configure_logging(
    level: str = "info", fmt: str = "json", raw_text: bool = False, worker: int = 0
) -> None:
    """Route structlog (and stdlib logging) to stderr as JSON lines (or console text);
    `worker`: this process's worker index, on every line (0: none, see api/workers.py)."""
    global _raw_text
    _raw_text = raw_text
    numeric = logging.getLevelName(level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([_add_worker(worker)] if worker else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("grpc").setLevel(max(numeric, logging.WARNING))


def _add_worker(worker: int) -> Any:
    def add(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("worker", worker)
        return event

    return add


def get_logger(name: str = "wacht") -> Any:
    return structlog.get_logger(name)


def text_fingerprint(text: str) -> dict[str, Any]:
    """What the logs may say about a user text: a sha256 prefix and the length."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    info: dict[str, Any] = {"sha256": digest, "length": len(text)}
    if _raw_text:
        info["text"] = text
    return info


def texts_summary(texts: list[str], limit: int = 8) -> dict[str, Any]:
    """Count, total length and the first few fingerprints of a request's texts."""
    return {
        "count": len(texts),
        "chars": sum(len(t) for t in texts),
        "texts": [text_fingerprint(t) for t in texts[:limit]],
    }


_IDS: tuple[str, itertools.count[int]] | None = None  # (random prefix, counter)


def _new_prefix() -> None:
    global _IDS
    _IDS = (os.urandom(8).hex(), itertools.count(1))


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    """32 hex digits, unique per process (a random prefix, drawn again in a forked child,
    and a counter): uuid4's urandom read per call was a tenth of the event loop's time
    under a flood of refused calls, and a getpid per call still 6% (system calls are dear
    in a sandboxed container)."""
    assert _IDS is not None
    return f"{_IDS[0]}{next(_IDS[1]):016x}"


def bind_request(request_id: str, method: str, caller: str | None = None) -> None:
    """Bind the call's id, method and (once known) caller name to every log line."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
    if caller is not None:
        structlog.contextvars.bind_contextvars(caller=caller)


def clear_request() -> None:
    structlog.contextvars.clear_contextvars()
