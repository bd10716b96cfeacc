"""Several `wacht serve` processes on loopback addresses 127.0.0.1, 127.0.0.2, ... with one
port, as the pods behind a headless Service: shared by the scale-out test and bench.

    with Replicas(3) as replicas:
        client = WachtClient(replicas.target)   # ipv4:127.0.0.1:P,127.0.0.2:P,127.0.0.3:P
        ...
        replicas.texts()   # wacht_texts_total (Moderate) per replica, from its /metrics
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "minilm-moderation"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def common_free_port(hosts: list[str]) -> int:
    """A port free on every host (tried a few times)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no common free port on {hosts}")


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


class Replica:
    def __init__(self, host: str, port: int, metrics_port: int, log: Path,
                 env: dict[str, str]) -> None:
        self.host, self.port, self.metrics_port = host, port, metrics_port
        base = {k: v for k, v in os.environ.items() if not k.startswith("WACHT_")}
        base.update({
            "WACHT_ADDRESS": f"{host}:{port}",
            "WACHT_METRICS_HOST": host,
            "WACHT_METRICS_PORT": str(metrics_port),
            "WACHT_MODELS": str(DEFAULT_MODEL),
            "WACHT_SHUTDOWN_GRACE_S": "10",
            **env,
        })
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"], cwd=REPO_ROOT, env=base,
                stdout=out, stderr=subprocess.STDOUT,
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def metrics(self) -> str:
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read().decode()

    def texts(self, method: str = "Moderate") -> float:
        return _metric(self.metrics(), "wacht_texts_total", method=method)

    def calls(self, method: str = "Moderate", code: str = "OK") -> float:
        return _metric(self.metrics(), "wacht_requests_total", method=method, code=code)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None


class Replicas:
    def __init__(self, count: int, log_dir: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.hosts = [f"127.0.0.{i + 1}" for i in range(count)]
        self.log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.env = env or {}
        self.replicas: list[Replica] = []

    def __enter__(self) -> Replicas:
        port = common_free_port(self.hosts)
        metrics_port = common_free_port(self.hosts)
        for i, host in enumerate(self.hosts):
            self.replicas.append(
                Replica(host, port, metrics_port, self.log_dir / f"replica-{i + 1}.log", self.env)
            )
        self.port = port
        self.wait_serving()
        return self

    def __exit__(self, *exc: Any) -> None:
        for replica in self.replicas:
            replica.stop()

    @property
    def target(self) -> str:
        """A gRPC target resolving to every replica (what DNS gives for a headless Service)."""
        return "ipv4:" + ",".join(r.address for r in self.replicas)

    def wait_serving(self, timeout: float = 120) -> None:
        from grpc_health.v1 import health_pb2

        from wacht.client import WachtClient

        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            with WachtClient(replica.address, timeout=2, service_config=None) as client:
                while True:
                    if replica.process.poll() is not None:
                        raise RuntimeError(f"{replica.address} exited; see {replica.log}")
                    try:
                        if client.health() == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except Exception:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{replica.address} not SERVING; see {replica.log}")
                    time.sleep(0.1)

    def texts(self, method: str = "Moderate") -> list[float]:
        return [r.texts(method) for r in self.replicas]
