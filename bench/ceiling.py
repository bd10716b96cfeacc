"""The ceiling: raw in-process onnxruntime throughput at fixed batch sizes (no server, no queue).

    python -m bench.ceiling [--model DIR] [--texts 512] [--threads 0] [--overhead]
                            [--texts-file JSON] [--truncation window|head] [--json]

Texts come from ../shared/data with their real length mix (bench.peers.texts), in drawn
order: a batch of b texts is b consecutive texts, tokenised, padded to its longest window
and run as ONE forward (long texts add windows to that forward), then aggregated — the
same work the server does per text, minus the queue and gRPC. Prints texts/s per batch
size and the best ("the ceiling"), plus single-text latency. `--overhead` also runs the
Batcher at concurrency 1 on the same texts and prints its latency against the raw one.

`measure_ceiling` is what bench.load imports; bench/peers/run.py runs the CLI with
`--texts-file --json` pinned to the server CPUs, so the ceiling sees the peers' corpus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "minilm-moderation"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
HUGE = 10**9


def run_batches(engine: Any, texts: list[str], size: int, truncation: str = "window") -> float:
    """Texts per second scoring `texts` in consecutive chunks of `size`, one forward each."""
    started = time.perf_counter()
    for i in range(0, len(texts), size):
        engine.predict(
            texts[i : i + size], truncation=truncation, batch_tokens=HUGE, batch_size=HUGE
        )
    return len(texts) / (time.perf_counter() - started)


def single_latencies_ms(engine: Any, texts: list[str], truncation: str = "window") -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        engine.predict([text], truncation=truncation)
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure_ceiling(
    model: str | Path | Any,
    texts: list[str],
    *,
    intra_op_threads: int = 0,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    sample: int = 512,
    single: int = 200,
    truncation: str = "window",
) -> dict[str, Any]:
    """Best raw throughput over batch sizes and the single-text p50 latency.

    `model` is a model directory or an already loaded Engine. Returns by_batch_size
    {size: texts/s}, best_batch_size, throughput (the ceiling, texts/s), single_p50_ms.
    """
    from wacht.service.runtime.engine import Engine

    engine = (
        model
        if isinstance(model, Engine)
        else Engine.load(model, intra_op_threads=intra_op_threads)
    )
    chosen = texts[:sample]
    engine.predict(chosen[:8])  # warm caches and allocator
    by_size = {size: run_batches(engine, chosen, size, truncation) for size in batch_sizes}
    latencies = single_latencies_ms(engine, texts[:single], truncation)
    best = max(by_size, key=by_size.__getitem__)
    return {
        "by_batch_size": by_size,
        "best_batch_size": best,
        "throughput": by_size[best],
        "single_p50_ms": statistics.median(latencies),
        "providers": list(engine.providers),
    }


def run_sorted(engine: Any, texts: list[str], tokens: int, size: int) -> float:
    """Texts per second when all texts are length-sorted into micro-batches of at most
    `tokens` padded tokens and `size` windows (what the batcher does under saturation)."""
    started = time.perf_counter()
    engine.predict(texts, batch_tokens=tokens, batch_size=size)
    return len(texts) / (time.perf_counter() - started)


async def overhead_ms(
    engine: Any, texts: list[str], rounds: int = 4, **config: Any
) -> tuple[float, float]:
    """p50 latency of one text: raw engine.predict vs through the Batcher at concurrency 1.
    Alternating blocks of texts (not single texts, which would bounce the work between
    threads and cores) so that drifting load from other processes hits both alike."""
    from wacht.service.batching.batcher import Batcher, BatchingConfig

    batcher = Batcher(engine, BatchingConfig(**config))
    await batcher.start()
    raw, batched = [], []
    block = max(1, len(texts) // rounds)
    try:
        for start in range(0, len(texts), block):
            chunk = texts[start : start + block]
            for text in chunk:
                began = time.perf_counter()
                engine.predict([text])
                raw.append((time.perf_counter() - began) * 1000)
            for text in chunk:
                began = time.perf_counter()
                await batcher.score([text])
                batched.append((time.perf_counter() - began) * 1000)
    finally:
        await batcher.stop()
    return statistics.median(raw), statistics.median(batched)


def main(argv: list[str] | None = None) -> int:
    from bench.peers.texts import describe, find_data, load_texts
    from wacht.service.runtime.engine import Engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    parser.add_argument("--overhead", action="store_true", help="also time the Batcher at c=1")
    parser.add_argument(
        "--sorted", action="store_true", help="also length-sorted micro-batches (tokens x size)"
    )
    parser.add_argument("--texts-file", type=Path, default=None, help="JSON list of texts")
    parser.add_argument("--truncation", choices=("window", "head"), default="window")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    if args.texts_file:
        texts = json.loads(args.texts_file.read_text(encoding="utf-8"))[: args.texts]
    else:
        data = find_data()
        if not data.is_dir():
            sys.exit(f"ceiling: {data} not found (the shared data sets sit beside the checkout)")
        texts = load_texts(data, args.texts)
    engine = Engine.load(args.model, intra_op_threads=args.threads)
    print(
        f"ceiling: {len(texts)} texts {describe(texts)}, {os.cpu_count()} CPUs, "
        f"providers {engine.providers}, precision {engine.manifest.precision}",
        flush=True,
    )
    result = measure_ceiling(engine, texts, sample=args.texts, truncation=args.truncation)
    print("| batch size | texts/s |")
    print("|---:|---:|")
    for size, rate in result["by_batch_size"].items():
        print(f"| {size} | {rate:.1f} |")
    print(
        f"ceiling: {result['throughput']:.1f} texts/s at batch {result['best_batch_size']}; "
        f"single-text p50 {result['single_p50_ms']:.2f} ms"
    )
    if args.json:
        print("CEILING_JSON " + json.dumps(result), flush=True)
    if args.sorted:
        print("length-sorted micro-batches (informational, not the ceiling):")
        for tokens, size in ((256, 4), (512, 4), (512, 8), (1024, 8), (2048, 16), (4096, 64)):
            rate = run_sorted(engine, texts, tokens, size)
            print(f"  <= {tokens} padded tokens, <= {size} windows: {rate:.1f} texts/s")
    if args.overhead:
        raw, batched = asyncio.run(overhead_ms(engine, texts[:200]))
        print(
            f"concurrency 1: raw p50 {raw:.2f} ms, batcher p50 {batched:.2f} ms, "
            f"overhead {batched - raw:+.2f} ms ({batched / raw:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
