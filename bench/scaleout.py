"""Aggregate texts/s with 1, 2 and 3 loopback replicas behind one client channel.

    python -m bench.scaleout [--replicas 1,2,3] [--seconds 15] [--concurrency 32] [--texts 8]

Each replica is a `wacht serve` process on 127.0.0.N with one port (bench.replicas); the
client is one grpc.aio channel with the shipped service config (round_robin) over
`ipv4:127.0.0.1:P,...`, closed loop with `--concurrency` calls in flight, `--texts` texts
per Moderate call. Reported per run: aggregate texts/s, each replica's share (from its
own wacht_texts_total), its CPU use and peak RSS (VmHWM) — the figures the Kubernetes
requests/limits come from. On a 2-core host every replica and the client share the same
two cores, so more replicas cannot add throughput here; the figure shows the overhead
of spreading, and the share shows the balancing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.replicas import Replicas

SENTENCE = "bench text {} about the weather, a long walk in the park and many other things"


async def _load(target: str, seconds: float, concurrency: int, texts: int) -> tuple[int, int]:
    from wacht.client import AsyncWachtClient

    batch = [SENTENCE.format(i) for i in range(texts)]
    done = 0
    failed = 0
    async with AsyncWachtClient(target, timeout=60) as client:
        for _ in range(4):  # connect every subchannel before the clock starts
            await client.moderate(batch)
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < end:
                try:
                    await client.moderate(batch)
                    done += texts
                except Exception:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed


def run(count: int, seconds: float, concurrency: int, texts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as logs, Replicas(count, Path(logs)) as replicas:
        before = replicas.texts()
        cpu_before = [r.cpu_seconds() for r in replicas.replicas]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        client_before = usage.ru_utime + usage.ru_stime
        started = time.monotonic()
        done, failed = asyncio.run(_load(replicas.target, seconds, concurrency, texts))
        wall = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = usage.ru_utime + usage.ru_stime - client_before
        served = [a - b for a, b in zip(replicas.texts(), before, strict=True)]
        cpu = [r.cpu_seconds() - c for r, c in zip(replicas.replicas, cpu_before, strict=True)]
        total = sum(served) or 1
        return {
            "replicas": count,
            "texts_per_s": round(done / wall, 1),
            "failed_calls": failed,
            "share": [round(s / total, 3) for s in served],
            "cpu_cores": [round(c / wall, 2) for c in cpu],
            "client_cpu_cores": round(client_cpu / wall, 2),
            "peak_rss_mib": [round(r.peak_rss_mib(), 1) for r in replicas.replicas],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts", type=int, default=8)
    args = parser.parse_args()
    results = [run(int(n), args.seconds, args.concurrency, args.texts)
               for n in args.replicas.split(",")]
    for r in results:
        print(json.dumps(r))
    base = results[0]["texts_per_s"]
    for r in results:
        print(f"{r['replicas']} replica(s): {r['texts_per_s']:8.1f} texts/s "
              f"({r['texts_per_s'] / base:.2f}x of {results[0]['replicas']}), "
              f"share {r['share']}, server cpu {r['cpu_cores']}, "
              f"client cpu {r['client_cpu_cores']}, peak RSS MiB {r['peak_rss_mib']}")


if __name__ == "__main__":
    main()
