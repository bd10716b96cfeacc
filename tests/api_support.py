"""Shared helpers for the API integration tests: a real server on a loopback port.

The server runs in-process on its own event loop in a background thread (so one model load
serves the whole session) or, for signal tests, as a subprocess (`python -m wacht.service serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# WACHT_TEST_MODEL points the API tests at another model directory (development only).
DEFAULT_MODEL = Path(
    os.environ.get("WACHT_TEST_MODEL") or REPO_ROOT / "models" / "minilm-moderation"
)


def require_model() -> Path:
    if not (DEFAULT_MODEL / "manifest.yaml").is_file():
        pytest.skip(f"default model not present at {DEFAULT_MODEL}")
    return DEFAULT_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(**overrides: Any) -> Any:
    """The default config on free loopback ports; keyword overrides (batching=..., limits=...)
    are applied on top, with dict values merged into the nested section."""
    from wacht.service.config import load_config

    config = load_config(None, env={})
    config.models = [DEFAULT_MODEL]
    config.address = "127.0.0.1:0"
    config.metrics_port = free_port()
    config.shutdown_grace_s = 5.0
    for key, value in overrides.items():
        current = getattr(config, key)
        if isinstance(value, dict):
            value = replace(current, **value)
        setattr(config, key, value)
    return config


class ServerThread:
    """A WachtServer on its own asyncio loop in a daemon thread."""

    def __init__(self, config: Any, load_models: bool = True) -> None:
        from wacht.service.api.server import WachtServer
        from wacht.service.observability.logging import configure_logging

        configure_logging("info", "json")  # to stderr, so stdout stays clean for CLI tests
        self.config = config
        from wacht.service.observability.loopload import new_event_loop

        self.loop = new_event_loop()  # as `wacht serve`'s
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = WachtServer(config)
        self.port = self.call(self.server.start(load_models=load_models))
        self.address = f"127.0.0.1:{self.port}"
        # the HTTP listener's base URL, when the config turns it on
        self.http_url = f"http://127.0.0.1:{self.server.http_port}" if self.server.http_port else ""

    def call(self, coro: Any, timeout: float = 120.0) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def wait_loaded(self, timeout: float = 120.0) -> None:
        self.call(self.server.loaded.wait(), timeout)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.server.stop(1.0), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def metric_samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `metric` in Prometheus text format."""
    out = []
    pattern = re.compile(rf"^{re.escape(metric)}(?:\{{(.*)\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            out.append((labels, float(match.group(2))))
    return out


def metric_value(text: str, metric: str, **labels: str) -> float:
    return sum(
        value
        for found, value in metric_samples(text, metric)
        if all(found.get(k) == v for k, v in labels.items())
    )


@contextlib.contextmanager
def server_thread(config: Any, require_ready: bool = True) -> Iterator[ServerThread]:
    server = ServerThread(config)
    try:
        server.wait_loaded()
        if require_ready and not server.server.state.ready:
            raise RuntimeError(f"server did not load: {server.server.state.load_error}")
        yield server
    finally:
        server.stop()


def start_subprocess(env_overrides: dict[str, str], log_file: Path) -> tuple[subprocess.Popen, int]:
    """`python -m wacht.service serve` on a free port, logging to `log_file`: (process, port)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACHT_")}
    env.update(
        {
            "WACHT_ADDRESS": f"127.0.0.1:{port}",
            "WACHT_METRICS_PORT": "0",
            "WACHT_MODELS": str(DEFAULT_MODEL),
            "WACHT_LOG__LEVEL": "info",
            **env_overrides,
        }
    )
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, port


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def wacht_server() -> Iterator[ServerThread]:
    """The real server with the real default model, loaded once per test session; its HTTP
    listener (service/http) is on, on a free port (`http_url`)."""
    require_model()
    with server_thread(make_config(http={"address": "127.0.0.1:0"})) as server:
        yield server


@pytest.fixture(scope="session")
def client(wacht_server: ServerThread) -> Iterator[Any]:
    from wacht.client import WachtClient

    with WachtClient(wacht_server.address, timeout=60) as c:
        yield c
