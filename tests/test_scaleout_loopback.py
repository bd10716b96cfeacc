"""Scale-out on loopback: three `wacht serve` processes on 127.0.0.1/.2/.3 with one port,
one client channel with the shipped service config (round_robin, retry of UNAVAILABLE,
client-side health checking). Each replica serves a fair share, and SIGTERM to one replica
under load loses no call."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from api_support import require_model

from bench.replicas import Replicas
from wacht.client import WachtClient

pytestmark = pytest.mark.slow
TEXTS = [f"replica test text {i}, long enough to tokenize into a few words" for i in range(4)]


def test_calls_spread_fairly_and_a_drained_replica_loses_none(tmp_path: Path) -> None:
    require_model()
    with Replicas(3, tmp_path) as replicas, WachtClient(replicas.target, timeout=30) as client:
        # round_robin starts with the subchannels that are connected: warm up first.
        for _ in range(30):
            client.moderate(TEXTS)
        time.sleep(0.5)
        base = replicas.texts()
        for _ in range(300):
            client.moderate(TEXTS)
        shares = [(t - b) / 1200 for t, b in zip(replicas.texts(), base, strict=True)]
        assert sum(shares) == pytest.approx(1.0)
        # round_robin: each replica gets a third (give or take one call per replica).
        assert all(abs(s - 1 / 3) < 0.02 for s in shares), shares

        # Under load (6 threads), SIGTERM the second replica: no call may fail.
        failures: list[str] = []
        done = [0]
        stop = threading.Event()
        lock = threading.Lock()

        def load() -> None:
            while not stop.is_set():
                try:
                    assert len(client.moderate(TEXTS).results) == len(TEXTS)
                    with lock:
                        done[0] += 1
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code().name}: {exc.details()}")

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = done[0]
        victim = replicas.replicas[1]
        victim_before = victim.texts()
        assert victim.stop(30) == 0  # drained and exited cleanly
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, failures[:5]
        assert done[0] > before + 10  # the load went on after the SIGTERM
        assert victim_before > 400  # the victim was serving when it was stopped
        survivors = [replicas.replicas[0].texts(), replicas.replicas[2].texts()]
        assert min(survivors) > 500
