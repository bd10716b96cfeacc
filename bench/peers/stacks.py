"""How each stack is started, made ready, measured and stopped (runs in bench/.venv-bench).

Every server runs on 127.0.0.1, in its own virtual environment, pinned to the server CPUs
(`sched_setaffinity` in the child before exec; its threads and children inherit it) with its
thread pools sized to those CPUs; its peak RSS is the sum over the whole process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
STACKS = ("wacht", "naive", "pytriton", "infinity")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Models:
    """Where each stack finds the model(s) of one workload."""
    wacht_dir: Path                      # a Wacht model directory
    hf: dict[str, Path]                  # task -> standard HF checkpoint (naive)
    onnx: dict[str, Path]                # task -> optimum ONNX folder (pytriton, infinity)
    max_length: int = 512


def labels_of(onnx_dir: Path) -> list[str]:
    config = json.loads((onnx_dir / "config.json").read_text())
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


@dataclass(eq=False)
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    endpoint: str                        # host:port (gRPC) or URL (HTTP)
    log: Path
    cpus: set[int]
    proc: subprocess.Popen | None = None
    tree: set[int] = field(default_factory=set)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cpus = self.cpus
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.tree.update(p.pid for p in procs)
        return procs

    def rss_bytes(self) -> int:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def pss_bytes(self) -> int:
        """Proportional set size over the tree: shared pages (libraries, a model mapped by
        several processes) counted once in all, unlike the RSS sum."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total

    def stop(self, grace_s: float = 20.0) -> str:
        """SIGTERM (what every stack handles), then SIGKILL for anything left in the tree."""
        if self.proc is None:
            return "not started"
        self.processes()
        how = "exited"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
                how = "SIGTERM"
            except subprocess.TimeoutExpired:
                how = "SIGKILL (ignored SIGTERM)"
        deadline = time.monotonic() + grace_s
        for pid in sorted(self.tree):
            try:
                p = psutil.Process(pid)
                p.wait(max(0.1, deadline - time.monotonic()))
            except psutil.NoSuchProcess:
                continue
            except psutil.TimeoutExpired:
                p.kill()
                how = "SIGKILL (ignored SIGTERM)"
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return how


class RssSampler:
    """Peak RSS (and PSS) of a server's process tree, sampled every `period_s` in a thread."""

    def __init__(self, server: Server, period_s: float = 0.25) -> None:
        self.server, self.period_s = server, period_s
        self.peak = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            self.peak_pss = max(self.peak_pss, self.server.pss_bytes())
            self._stop.wait(self.period_s)

    def reset(self) -> None:
        self.peak = self.server.rss_bytes()
        self.peak_pss = self.server.pss_bytes()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _base_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WACHT_", "PYTHON"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME="/tmp/wacht-bench-hf")
    return env


def make_server(stack: str, models: Models, tasks: list[str], cpus: set[int],
                logs: Path, tag: str, wacht_config: dict[str, str] | None = None) -> Server:
    """A not-yet-started server of `stack` serving `tasks` (peers: one model per task)."""
    threads = len(cpus)
    env = _base_env(threads)
    port = free_port()
    log = logs / f"{tag}-{stack}.log"
    if stack == "wacht":
        env.update(WACHT_ADDRESS=f"127.0.0.1:{port}", WACHT_METRICS_PORT="0",
                   WACHT_MODELS=str(models.wacht_dir), WACHT_INTRA_OP_THREADS=str(threads),
                   WACHT_LOG__LEVEL="warning")
        env.update(wacht_config or {})
        argv = [str(REPO / ".venv" / "bin" / "wacht"), "serve"]
        return Server(stack, argv, env, f"127.0.0.1:{port}", log, cpus)
    if stack == "naive":
        env["PYTHONPATH"] = str(REPO)
        argv = [str(BENCH / ".venv-naive" / "bin" / "python"), str(BENCH / "peers" /
                "naive_server.py"), "--address", f"127.0.0.1:{port}",
                "--max-length", str(models.max_length)]
        argv += [a for t in tasks for a in ("--model", f"{t}={models.hf[t]}")]
        return Server(stack, argv, env, f"127.0.0.1:{port}", log, cpus)
    if stack == "pytriton":
        env.update(PYTRITON_HOME="/tmp/wacht-bench-pytriton",
                   LD_LIBRARY_PATH=_libpython_dir(BENCH / ".venv-pytriton" / "bin" / "python"))
        argv = [str(BENCH / ".venv-pytriton" / "bin" / "python"), str(BENCH / "peers" /
                "triton_server.py"), "--grpc-port", str(port), "--http-port", str(free_port()),
                "--metrics-port", "0", "--max-length", str(models.max_length)]
        argv += [a for t in tasks for a in ("--model", f"{t}={models.onnx[t]}")]
        return Server(stack, argv, env, f"127.0.0.1:{port}", log, cpus)
    if stack == "infinity":
        env.update(DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="false")
        argv = [str(BENCH / ".venv-infinity" / "bin" / "python"), str(BENCH / "peers" /
                "infinity_launcher.py"), "--max-length", str(models.max_length), "v2",
                "--engine", "optimum", "--device", "cpu", "--onnx-disable-optimize",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        for t in tasks:
            argv += ["--model-id", str(models.onnx[t]), "--served-model-name", t]
        return Server(stack, argv, env, f"http://127.0.0.1:{port}", log, cpus)
    raise ValueError(f"unknown stack {stack!r}; known: {STACKS}")


def _libpython_dir(python: Path) -> str:
    """The directory of the libpython that `python` itself runs (not the system's)."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var("
                          "'LIBDIR'))"], capture_output=True, text=True, check=True)
    return out.stdout.strip() or sysconfig.get_config_var("LIBDIR")


def make_client(server: Server, task: str, tasks: list[str], models: Models,
                wacht_truncation: str, timeout: float):
    from bench.peers import clients

    if server.name == "wacht":
        return clients.WachtClient(server.endpoint, task, wacht_truncation, timeout)
    if server.name == "naive":
        return clients.NaiveClient(server.endpoint, task, tasks, timeout)
    if server.name == "pytriton":
        labels = {t: labels_of(models.onnx[t]) for t in tasks}
        return clients.TritonClient(server.endpoint, task, tasks, labels, timeout)
    return clients.InfinityClient(server.endpoint, task, tasks, timeout)
