"""`workers: N`: N server processes on the same ports, started and watched by this one.

One Python process takes in a bounded number of calls per second whatever its cores: grpc.aio
runs every call's steps on one event-loop thread (measured in bench/README.md: given 4 cores
under a flood of one-text calls it used 1.93). Workers are full `wacht serve` processes, each
with its own event loop, models and batchers, listening on the same gRPC, HTTP and health
ports with SO_REUSEPORT, so the kernel spreads client *connections* over them (a client with
one connection reaches one worker; the shipped client service config and several channels
spread). Each worker runs `cores / workers` forwards at once by default; per-caller quotas and
fair queueing are per worker, as they are per replica.

The supervisor loads no model. It serves `/metrics` on `metrics_port`: every worker's
metrics, scraped from its own loopback port, with a `worker` label, plus `wacht_workers` and
`wacht_worker_restarts_total`. SIGTERM/SIGINT and SIGHUP are passed on to every worker (a
drain, a reload). A worker that exits while the server is not stopping is started again
(after 1 s, doubling to 30 s while it keeps failing); one that fails three times in a row
within 10 s of its start stops the whole server with its exit code, as a single server
would have (a bad config or a taken port).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wacht.service.config import Config
from wacht.service.observability.logging import get_logger

log = get_logger("wacht.workers")
QUICK_EXIT_S = 10.0
QUICK_FAILURES = 3


def concrete_address(address: str) -> str:
    """host:port with port 0 replaced by a port free now, so every worker binds the same."""
    host, _, port = address.rpartition(":")
    if not address or int(port) != 0:
        return address
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host.strip("[]"), 0))
        return f"{host}:{s.getsockname()[1]}"


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerMetrics(Collector):
    """Every worker's /metrics, each sample labelled with its worker."""

    def __init__(self, ports: Mapping[int, int]) -> None:
        self.ports = ports

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, port in sorted(self.ports.items()):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue  # starting or restarting: its samples are missing from this scrape
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": str(index)},
                                      sample.value, sample.timestamp, sample.exemplar)
        yield from families.values()


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_failures: int = 0
    restart_at: float = 0.0
    backoff_s: float = 1.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started = time.monotonic()
        log.info("worker started", worker=self.index, pid=self.process.pid)

    def send(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)


@dataclass
class Supervisor:
    config: Config
    env: Mapping[str, str]
    config_file: str | None = None
    workers: list[Worker] = field(default_factory=list)
    _signals: list[int] = field(default_factory=list)

    def _worker_env(self, index: int, metrics_port: int) -> dict[str, str]:
        config = self.config
        env = dict(self.env)
        env.update({
            "WACHT_WORKER": str(index),
            "WACHT_ADDRESS": self.address,
            "WACHT_METRICS_HOST": "127.0.0.1",
            "WACHT_METRICS_PORT": str(metrics_port),
        })
        if config.http.address:
            env["WACHT_HTTP__ADDRESS"] = self.http_address
        if self.health_address:
            env["WACHT_HEALTH_ADDRESS"] = self.health_address
        return env

    def run(self) -> int:
        config = self.config
        self.address = concrete_address(config.address)
        self.http_address = concrete_address(config.http.address)
        self.health_address = concrete_address(config.health_listen_address())
        argv = [sys.executable, "-m", "wacht.service", "serve"]
        if self.config_file:
            argv += ["--config", self.config_file]
        metrics_ports = {i: free_loopback_port() if config.metrics_port else 0
                         for i in range(1, config.workers + 1)}
        self.workers = [Worker(i, self._worker_env(i, metrics_ports[i]), argv)
                        for i in metrics_ports]
        registry = CollectorRegistry()
        alive = Gauge("wacht_workers", "Worker processes running", registry=registry)
        restarts = Counter("wacht_worker_restarts", "Workers started again after an exit",
                           registry=registry)
        http_server = None
        if config.metrics_port:
            registry.register(WorkerMetrics(metrics_ports))
            http_server, _ = start_http_server(config.metrics_port, addr=config.metrics_host,
                                               registry=registry)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda s, _frame: self._signals.append(s))
        log.info("workers", workers=config.workers, address=self.address,
                 http_address=self.http_address or None,
                 health_address=self.health_address or None,
                 metrics_port=config.metrics_port or None)
        for worker in self.workers:
            worker.start()
        try:
            code = self._watch(alive, restarts)
        finally:
            if http_server is not None:
                http_server.shutdown()
        return code

    def _watch(self, alive: Gauge, restarts: Counter) -> int:
        while True:
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGHUP:
                    log.info("reload: passing SIGHUP to the workers")
                    for worker in self.workers:
                        worker.send(signal.SIGHUP)
                else:
                    return self._stop()
            now = time.monotonic()
            running = 0
            for worker in self.workers:
                process = worker.process
                if process is not None and process.poll() is None:
                    running += 1
                    if now - worker.started > QUICK_EXIT_S:
                        worker.quick_failures, worker.backoff_s = 0, 1.0
                    continue
                if process is not None:  # it has just exited
                    code = process.returncode
                    quick = now - worker.started < QUICK_EXIT_S
                    worker.quick_failures = worker.quick_failures + 1 if quick else 0
                    log.warning("worker exited", worker=worker.index, pid=process.pid,
                                code=code, quick_failures=worker.quick_failures)
                    worker.process = None
                    if worker.quick_failures >= QUICK_FAILURES:
                        log.error("worker keeps failing at start; stopping", worker=worker.index)
                        self._stop()
                        return code if code > 0 else 1
                    worker.restart_at = now + worker.backoff_s
                    worker.backoff_s = min(30.0, worker.backoff_s * 2)
                elif now >= worker.restart_at:
                    worker.start()
                    restarts.inc()
                    running += 1
            alive.set(running)
            time.sleep(0.1)

    def _stop(self) -> int:
        """SIGTERM to every worker (each drains), then wait; the worst exit code."""
        log.info("stopping workers")
        for worker in self.workers:
            worker.send(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace_s + 10
        codes = []
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                codes.append(worker.process.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                codes.append(worker.process.wait())
        log.info("stopped", codes=codes)
        return max((c for c in codes if c > 0), default=0)


def serve_workers(config: Config, env: Mapping[str, str], config_file: str | None) -> int:
    """Run `config.workers` workers until SIGTERM/SIGINT; the exit code."""
    return Supervisor(config, env, config_file).run()
