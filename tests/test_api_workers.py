"""`workers: 2`: a real `wacht serve` supervisor with two worker processes on one port.

Connections spread over both workers, the supervisor's /metrics carries each worker's
samples with a `worker` label, a killed worker is started again while the other keeps
serving, SIGTERM drains both and exits 0, and a worker that cannot start stops the server
with an error instead of restarting for ever."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import (
    free_port,
    metric_samples,
    metric_value,
    require_model,
    start_subprocess,
    wait_for,
)

from wacht.client import WachtClient

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def moderated_by(text: str) -> dict[str, float]:
    """OK Moderate calls per worker, from the supervisor's metrics text."""
    return {labels["worker"]: value
            for labels, value in metric_samples(text, "wacht_requests_total")
            if labels.get("method") == "Moderate" and labels.get("code") == "OK"}


def serving(port: int) -> bool:
    try:
        with WachtClient(f"127.0.0.1:{port}", timeout=2) as client:
            return client.health() == 1
    except Exception:
        return False


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, int]]:
    require_model()
    metrics_port = free_port()
    process, port = start_subprocess(
        {"WACHT_WORKERS": "2", "WACHT_METRICS_PORT": str(metrics_port)}, tmp_path / "log")
    try:
        wait_for(lambda: len(children(process.pid)) == 2, 30)
        wait_for(lambda: metric_value(metrics(metrics_port), "wacht_workers") == 2, 60)
        wait_for(lambda: serving(port), 120)
        yield process, port, metrics_port
    finally:
        left = children(process.pid)  # before the supervisor goes (they would be orphans)
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def call_on_new_connections(port: int, calls: int) -> None:
    for i in range(calls):
        # each client its own connection, as separate client processes have
        with WachtClient(f"127.0.0.1:{port}", timeout=30, own_connection=True) as client:
            assert client.moderate([f"worker test {i}: you are an idiot"]).results[0].flagged


def test_connections_spread_and_metrics_name_the_worker(supervisor: tuple) -> None:
    process, port, metrics_port = supervisor
    call_on_new_connections(port, 24)
    by_worker = moderated_by(metrics(metrics_port))
    assert sum(by_worker.values()) == 24
    # 24 connections, each on either worker at random: both get some (1 in 8 million not)
    assert set(by_worker) == {"1", "2"} and min(by_worker.values()) >= 1, by_worker
    assert metric_value(metrics(metrics_port), "wacht_worker_restarts_total") == 0


def test_a_killed_worker_is_restarted_and_sigterm_drains_both(supervisor: tuple) -> None:
    process, port, metrics_port = supervisor
    first, second = children(process.pid)
    os.kill(first, signal.SIGKILL)
    # (connections the kernel queued on the killed worker's socket are reset: clients retry)
    wait_for(lambda: first not in children(process.pid), 10)
    call_on_new_connections(port, 6)  # the other worker serves meanwhile
    wait_for(lambda: metric_value(metrics(metrics_port), "wacht_worker_restarts_total") == 1,
             30)
    now = children(process.pid)
    assert second in now and first not in now and len(now) == 2
    wait_for(lambda: metric_value(metrics(metrics_port), "wacht_workers") == 2, 30)

    def both_served() -> bool:  # only the survivor served the 6 calls: now the new one too
        call_on_new_connections(port, 4)
        return set(moderated_by(metrics(metrics_port))) == {"1", "2"}

    wait_for(both_served, 120, 0.5)

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert time.monotonic() - started < 20
    assert children(process.pid) == []
    with socket.socket() as s:  # the port is free again: nobody is left listening
        s.bind(("127.0.0.1", port))


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    require_model()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]  # bound without SO_REUSEPORT: no worker can share it
        process, _ = start_subprocess(
            {"WACHT_WORKERS": "2", "WACHT_ADDRESS": f"127.0.0.1:{port}"}, tmp_path / "log")
        code = process.wait(120)
    assert code == 1
    log = (tmp_path / "log").read_text()
    assert "cannot listen on" in log and "keeps failing at start" in log
