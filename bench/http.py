"""What the HTTP/JSON path costs against gRPC, on the same texts against one real server.

    python -m bench.http [--concurrency 1,16] [--seconds 5] [--rounds 3] [--texts 2048]

One `wacht serve` subprocess with the HTTP listener on. For each concurrency level the four
front ends take turns (interleaved rounds, so machine noise hits all of them alike), one
text per call, closed loop:

    grpc         Moderation.Moderate via AsyncWachtClient
    json         POST /wacht/v1/moderate (protobuf canonical JSON)
    openai       POST /v1/moderations
    perspective  POST /v1alpha1/comments:analyze (TOXICITY, INSULT)

Reported per front end: texts/s, p50/p99 latency, and the server's CPU per call (utime +
stime of the server process from /proc over the round, divided by the calls), which is the
cost that does not depend on the client. Texts come from ../shared/data (bench.peers.texts).
Not run in CI; needs a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.load import DEFAULT_MODEL, Run, ServerProcess, _free_port, load_bench_texts

FRONTS = ("grpc", "json", "openai", "perspective")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bodies(front: str, text: str) -> tuple[str, bytes]:
    if front == "json":
        return "/wacht/v1/moderate", json.dumps({"texts": [{"text": text}]}).encode()
    if front == "openai":
        return "/v1/moderations", json.dumps({"input": text}).encode()
    return "/v1alpha1/comments:analyze", json.dumps(
        {"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}, "INSULT": {}}}
    ).encode()


async def _loop(
    label: str, send: Callable[[str], Awaitable[None]], texts: list[str], concurrency: int,
    seconds: float, pid: int,
) -> tuple[Run, float]:
    latencies: list[float] = []
    errors = done = position = 0
    for text in texts[:concurrency]:
        await send(text)  # warm connections
    cpu0 = _cpu_seconds(pid)
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, done, position
        while time.perf_counter() < stop_at:
            text = texts[position % len(texts)]
            position += 1
            started = time.perf_counter()
            try:
                await send(text)
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu_ms = (_cpu_seconds(pid) - cpu0) * 1000 / max(1, done)
    return Run(label, concurrency, done, elapsed, latencies, errors), cpu_ms


async def bench(texts: list[str], levels: list[int], seconds: float, rounds: int,
                model: Path) -> dict[tuple[str, int], list[tuple[Run, float]]]:
    import aiohttp

    from wacht.client import AsyncWachtClient

    http_port = _free_port()
    server = ServerProcess(model, {"WACHT_HTTP__ADDRESS": f"127.0.0.1:{http_port}"})
    base = f"http://127.0.0.1:{http_port}"
    results: dict[tuple[str, int], list[tuple[Run, float]]] = {}
    try:
        await server.wait_serving()
        connector = aiohttp.TCPConnector(limit=0)
        async with AsyncWachtClient(server.address, timeout=60) as grpc_client, \
                aiohttp.ClientSession(connector=connector) as session:

            async def grpc_send(text: str) -> None:
                await grpc_client.moderate([text])

            def http_send(front: str) -> Callable[[str], Awaitable[None]]:
                async def send(text: str) -> None:
                    path, body = _bodies(front, text)
                    async with session.post(base + path, data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"{front}: HTTP {r.status}")
                return send

            senders = {"grpc": grpc_send, **{f: http_send(f) for f in FRONTS[1:]}}
            for level in levels:
                for round_ in range(rounds):
                    order = FRONTS if round_ % 2 == 0 else tuple(reversed(FRONTS))
                    for front in order:
                        run, cpu = await _loop(front, senders[front], texts, level, seconds,
                                               server.process.pid)
                        results.setdefault((front, level), []).append((run, cpu))
                        print(f"  c={level:<3} round {round_} {front:<12} "
                              f"{run.throughput:7.1f} texts/s  p50 {run.pct(0.5):6.2f} ms  "
                              f"p99 {run.pct(0.99):6.2f} ms  server CPU {cpu:5.2f} ms/call  "
                              f"errors {run.errors}", flush=True)
    finally:
        server.stop()
    return results


def merged(runs: list[tuple[Run, float]]) -> tuple[Run, float]:
    first = runs[0][0]
    run = Run(first.label, first.concurrency, sum(r.texts for r, _ in runs),
              sum(r.seconds for r, _ in runs), [x for r, _ in runs for x in r.latencies_ms],
              sum(r.errors for r, _ in runs))
    cpu = sum(c * r.texts for r, c in runs) / max(1, run.texts)
    return run, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="per front end and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=2048)
    args = parser.parse_args(argv)
    texts = load_bench_texts(args.texts)
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"bench.http: {len(texts)} texts, {os.cpu_count()} CPUs, {args.rounds} rounds of "
          f"{args.seconds:g} s per front end", flush=True)
    results = asyncio.run(bench(texts, levels, args.seconds, args.rounds, args.model))
    print()
    print("| front end | concurrency | texts/s | vs gRPC | p50 ms | p99 ms | server CPU ms/call "
          "| errors |")
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        grpc_run, _ = merged(results[("grpc", level)])
        for front in FRONTS:
            run, cpu = merged(results[(front, level)])
            ratio = run.throughput / grpc_run.throughput if grpc_run.throughput else 0.0
            print(f"| {front} | {level} | {run.throughput:.1f} | {ratio:.2f} | "
                  f"{run.pct(0.5):.2f} | {run.pct(0.99):.2f} | {cpu:.2f} | {run.errors} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
