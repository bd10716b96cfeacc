"""Generation speed of the explainer on this CPU: prompt processing and decode, per precision.

    python -m bench.generation [--dirs DIR ...] [--prompt-tokens 64,256,1024] [--new-tokens 64]
                               [--threads 0] [--repeats 3]

Prompt processing (prefill): one forward over N prompt tokens, tokens/s. Decode: greedy one-token
forwards with the KV cache after a 256-token prompt, EOS ignored, tokens/s. Default dirs: the fp32
and int8 builds under build/explainer/ that exist (`make explainer`; int8 with
`python -m wacht.models.explainer --precision int8`). Also prints int8/fp32 ratios and a
sample reply per model. Not run in CI; needs a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from wacht.service.runtime.generator import GenerationStats, Generator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = [
    ROOT / "build/explainer/smollm2-135m-instruct",
    ROOT / "build/explainer/smollm2-135m-instruct-int8",
]
SAMPLE = [
    {"role": "system", "content": "You explain content-moderation decisions in one sentence."},
    {
        "role": "user",
        "content": 'Text: "you are a worthless idiot"\nDecision: block (insult 0.97, toxicity '
        "0.93).\nSay briefly why it was blocked, naming the categories.",
    },
]


def prompt_ids(generator: Generator, n: int) -> list[int]:
    filler = generator.tokenizer.encode(
        "The quick brown fox jumps over the lazy dog. " * (n // 8 + 1), add_special_tokens=False
    ).ids
    return filler[:n]


def prefill_rate(generator: Generator, n: int, repeats: int) -> float:
    ids = prompt_ids(generator, n)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        generator.forward(ids, None, 0)
        times.append(time.perf_counter() - started)
    return n / statistics.median(times)


def decode_rate(generator: Generator, new_tokens: int, repeats: int) -> float:
    ids = prompt_ids(generator, 256)
    rates = []
    for _ in range(repeats):
        logits, past = generator.forward(ids, None, 0)
        length = len(ids)
        started = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(logits[-1]))
            logits, past = generator.forward([token], past, length)
            length += 1
        rates.append(new_tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="explainer generation speed")
    parser.add_argument("--dirs", nargs="*", type=Path)
    parser.add_argument("--prompt-tokens", default="64,256,1024")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dirs = args.dirs or [d for d in DEFAULT_DIRS if (d / "manifest.yaml").is_file()]
    if not dirs:
        parser.error("no explainer directory: run `make explainer` first")
    sizes = [int(s) for s in args.prompt_tokens.split(",")]
    results: dict[str, dict[str, float]] = {}
    for path in dirs:
        started = time.perf_counter()
        generator = Generator.load(path, intra_op_threads=args.threads)
        load_s = time.perf_counter() - started
        precision = generator.manifest.precision
        size_mb = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
        generator.forward(prompt_ids(generator, 16), None, 0)  # warm-up
        row = {f"prefill@{n}": prefill_rate(generator, n, args.repeats) for n in sizes}
        row["decode"] = decode_rate(generator, args.new_tokens, args.repeats)
        results[precision] = row
        stats = GenerationStats()
        reply = "".join(generator.stream(SAMPLE, max_new_tokens=60, stats=stats))
        print(f"\n== {path.name} ({precision}, {size_mb:.0f} MiB on disk, load {load_s:.1f} s)")
        for key, value in row.items():
            print(f"  {key:>14}: {value:8.1f} tokens/s")
        print(f"  sample ({stats.new_tokens} tokens, {stats.stop_reason}): {reply!r}")
    if "fp32" in results and "int8" in results:
        print("\n== int8 / fp32 speed ratio")
        for key in results["fp32"]:
            print(f"  {key:>14}: {results['int8'][key] / results['fp32'][key]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
