"""Closed-loop gRPC load against a real `wacht serve`, with two references in the same run.

    python -m bench.load [--model DIR] [--concurrency 1,8,32,128] [--seconds 10]

1. Ceiling: raw in-process onnxruntime at its best batch size (bench.ceiling, engineer R),
   plus its single-text latency.
2. The server with batching on (the configured defaults), one text per Moderate call,
   closed loop at each concurrency: throughput (texts/s) and p50/p90/p99 latency.
3. The same server with batching off (`batching.max_batch_size: 1`).

Texts come from ../shared/data (bench.peers.texts: tweets, reviews, Reddit, Wikipedia).
Each server runs as a subprocess, so the load generator and the server are separate
processes (on a 2-core machine they still share the cores: the client's cost is in the
numbers). Not run in CI; needs a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "minilm-moderation"


@dataclass
class Run:
    label: str
    concurrency: int
    texts: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def throughput(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_bench_texts(count: int) -> list[str]:
    from bench.peers.texts import find_data, load_texts

    data = find_data()
    if not data.is_dir():
        sys.exit(f"bench: {data} not found (the shared data sets sit beside the checkout)")
    return load_texts(data, count)


def ceiling(model: Path, texts: list[str], threads: int) -> dict[str, Any]:
    """Best raw onnxruntime throughput over batch sizes, and single-text latency."""
    from bench.ceiling import measure_ceiling  # engineer R's reference

    return dict(measure_ceiling(model, texts, intra_op_threads=threads))


class ServerProcess:
    def __init__(self, model: Path, env_overrides: dict[str, str]) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WACHT_")}
        env.update(
            {
                "WACHT_ADDRESS": f"127.0.0.1:{self.port}",
                "WACHT_METRICS_PORT": "0",
                "WACHT_MODELS": str(model),
                "WACHT_LOG__LEVEL": "warning",
                **env_overrides,  # may replace any of the above
            }
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], cwd=REPO_ROOT, env=env
        )
        self.address = f"127.0.0.1:{self.port}"

    async def wait_serving(self, timeout: float = 180.0) -> None:
        from wacht.client import AsyncWachtClient

        deadline = time.monotonic() + timeout
        async with AsyncWachtClient(self.address, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError("server exited during start-up")
                try:
                    if await client.health() == 1:
                        return
                except Exception:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("server did not become SERVING")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def closed_loop(
    address: str, label: str, texts: list[str], concurrency: int, seconds: float,
    models: dict[str, int] | None = None, **options: str,
) -> Run:
    """One text per Moderate call (with `options`); `models` counts the answering model."""
    import grpc

    from wacht.client import AsyncWachtClient

    latencies: list[float] = []
    errors = 0
    done = 0
    position = 0
    async with AsyncWachtClient(address, timeout=60) as client:
        for text in texts[:concurrency]:  # warm the connection
            await client.moderate([text], **options)
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, done, position
            while time.perf_counter() < stop_at:
                text = texts[position % len(texts)]
                position += 1
                started = time.perf_counter()
                try:
                    reply = await client.moderate([text], **options)
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                if models is not None:
                    name = reply.results[0].model.name
                    models[name] = models.get(name, 0) + 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Run(label, concurrency, done, elapsed, latencies, errors)


async def bench_server(
    model: Path, label: str, env: dict[str, str], texts: list[str], levels: list[int], secs: float
) -> list[Run]:
    server = ServerProcess(model, env)
    try:
        await server.wait_serving()
        runs = []
        for level in levels:
            run = await closed_loop(server.address, label, texts, level, secs)
            print(
                f"  {label:<12} c={level:<4} {run.throughput:7.1f} texts/s  "
                f"p50 {run.pct(0.5):7.1f} ms  p99 {run.pct(0.99):7.1f} ms  errors {run.errors}",
                flush=True,
            )
            runs.append(run)
        return runs
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = load_bench_texts(args.texts)
    print(f"bench: {len(texts)} texts, model {args.model}, {os.cpu_count()} CPUs", flush=True)

    ref = ceiling(args.model, texts, args.threads)
    print(
        f"  ceiling      best batch {ref['best_batch_size']}: {ref['throughput']:.1f} texts/s, "
        f"single-text p50 {ref['single_p50_ms']:.1f} ms",
        flush=True,
    )
    threads = {"WACHT_INTRA_OP_THREADS": str(args.threads)}
    on = asyncio.run(bench_server(args.model, "batching", threads, texts, levels, args.seconds))
    off_env = {**threads, "WACHT_BATCHING__MAX_BATCH_SIZE": "1"}
    off = asyncio.run(
        bench_server(args.model, "batching-off", off_env, texts, levels, args.seconds)
    )

    print()
    print(
        "| concurrency | texts/s | p50 ms | p90 ms | p99 ms | off texts/s | off p50 ms | on/off |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(on, off, strict=True):
        ratio = a.throughput / b.throughput if b.throughput else float("nan")
        print(
            f"| {a.concurrency} | {a.throughput:.1f} | {a.pct(0.5):.1f} | {a.pct(0.9):.1f} | "
            f"{a.pct(0.99):.1f} | {b.throughput:.1f} | {b.pct(0.5):.1f} | {ratio:.2f} |"
        )
    saturated = max(r.throughput for r in on)
    print()
    print(f"ceiling: {ref['throughput']:.1f} texts/s at batch {ref['best_batch_size']}")
    print(f"saturated / ceiling: {saturated / ref['throughput']:.2f} (target >= 0.85)")
    worst = min(a.throughput / b.throughput for a, b in zip(on, off, strict=True) if b.throughput)
    print(f"worst batching-on / batching-off: {worst:.2f} (target >= 1.0)")
    print(
        f"p50@c1 / ceiling single-text latency: {on[0].pct(0.5) / ref['single_p50_ms']:.2f} "
        "(target <= 1.3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
