"""Language routing and the multilingual model: detector accuracy and cost, routing cost,
texts/s of each model beside the other in one server.

    python -m bench.multilingual [--seconds 5] [--concurrency 1,16,64]

1. Language identification (lid.176, in-process): top-1 accuracy on English (TweetEval
   offensive test, SST-2 dev) and German (our GermEval dev split) texts, overall and for
   texts of at most six words; microseconds per text; the router's cost per text (detect +
   table lookup) for calls of 1 and 64 texts.
2. One `wacht serve` with both models (English default + multilingual), one text per
   Moderate call, closed loop at each concurrency, interleaved workloads:
   - `en routed`: English texts, detected -> minilm-moderation
   - `de routed`: German texts, detected -> use-multilingual-moderation
   - `de hinted`: the same German texts with language="de" (no detection): routed minus
     hinted is what detection costs end to end.
Not run in CI; needs a quiet machine (ratios within one run are what to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from bench import load
from bench.load import REPO_ROOT, Run, ServerProcess

MODELS = [REPO_ROOT / "models" / "minilm-moderation",
          REPO_ROOT / "models" / "use-multilingual-moderation"]


def corpora() -> dict[str, list[str]]:
    from wacht.models.data import DEFAULT_DATA_DIR, germeval_split, tweeteval

    data = DEFAULT_DATA_DIR
    if not data.is_dir():
        sys.exit(f"bench: {data} not found")
    import csv

    with (data / "sst2" / "dev.tsv").open(encoding="utf-8") as f:
        sst2 = [r[0] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    en = [t for t, _ in tweeteval(data, "offensive", "test")] + sst2
    de = [t for t, _, _ in germeval_split(data, "dev")]
    return {"en": [t for t in en if t.strip()], "de": [t for t in de if t.strip()]}


def language_id(texts: dict[str, list[str]]) -> None:
    from wacht.service.moderation.routing import Router, RoutingTable
    from wacht.service.runtime.language import LanguageDetector

    detector = LanguageDetector()
    print("| language | texts | accuracy | texts <= 6 words | accuracy there |")
    print("|---|---:|---:|---:|---:|")
    total = short_total = right = short_right = 0
    for lang, items in texts.items():
        found = detector.detect(items)
        ok = [d.language == lang for d in found]
        short = [len(t.split()) <= 6 for t in items]
        s_ok = [o for o, s in zip(ok, short, strict=True) if s]
        print(f"| {lang} | {len(items)} | {sum(ok) / len(ok):.3f} | {len(s_ok)} | "
              f"{(sum(s_ok) / len(s_ok)) if s_ok else float('nan'):.3f} |")
        total += len(ok)
        right += sum(ok)
        short_total += len(s_ok)
        short_right += sum(s_ok)
    print(f"| all | {total} | {right / total:.3f} | {short_total} | "
          f"{short_right / max(1, short_total):.3f} |")
    every = [t for items in texts.values() for t in items]
    started = time.perf_counter()
    for _ in range(3):
        detector.detect(every)
    per_text = (time.perf_counter() - started) / (3 * len(every)) * 1e6
    print(f"\ndetector: {per_text:.1f} µs per text (one thread, {len(every)} texts x 3)")
    table = RoutingTable.build([("en", ["en"]), ("multi", ["de", "en"])], fallback="en")
    router = Router(table, detector)

    async def route(size: int, rounds: int) -> float:
        chunk = every[:size]
        started = time.perf_counter()
        for _ in range(rounds):
            await router.routes(chunk)
        return (time.perf_counter() - started) / (rounds * size) * 1e6

    print(f"router: {asyncio.run(route(1, 2000)):.1f} µs per text in 1-text calls, "
          f"{asyncio.run(route(64, 100)):.1f} µs per text in 64-text calls")


async def closed_loop(address: str, label: str, texts: list[str], concurrency: int,
                      seconds: float, **options: str) -> Run:
    models: dict[str, int] = {}
    run = await load.closed_loop(address, label, texts, concurrency, seconds, models, **options)
    top = max(models, key=models.__getitem__) if models else "-"
    print(f"  {label:<10} c={concurrency:<3} {run.throughput:7.1f} texts/s  "
          f"p50 {run.pct(0.5):7.1f} ms  -> {top} ({models.get(top, 0)}/{run.texts})  "
          f"errors {run.errors}", flush=True)
    return run


async def serving(texts: dict[str, list[str]], levels: list[int], seconds: float) -> None:
    env = {"WACHT_MODELS": ",".join(str(m) for m in MODELS)}
    server = ServerProcess(MODELS[0], env)
    try:
        await server.wait_serving()
        workloads = [("en routed", texts["en"], {}), ("de routed", texts["de"], {}),
                     ("de hinted", texts["de"], {"language": "de"})]
        rows: dict[tuple[str, int], Run] = {}
        for level in levels:
            for label, items, options in workloads:
                rows[(label, level)] = await closed_loop(server.address, label, items, level,
                                                         seconds, **options)
    finally:
        server.stop()
    print("\n| concurrency | en -> minilm texts/s | de -> multilingual texts/s | "
          "de hinted texts/s | multilingual / minilm | routed / hinted (de) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for level in levels:
        en, de, hint = (rows[(w, level)] for w in ("en routed", "de routed", "de hinted"))
        print(f"| {level} | {en.throughput:.1f} | {de.throughput:.1f} | {hint.throughput:.1f} "
              f"| {de.throughput / en.throughput:.2f} | {de.throughput / hint.throughput:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multilingual", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args(argv)
    missing = [m for m in MODELS if not (Path(m) / "manifest.yaml").is_file()]
    if missing and not args.skip_serving:
        sys.exit(f"bench: model directory missing: {missing}")
    texts = corpora()
    print(f"bench: {os.cpu_count()} CPUs; {len(texts['en'])} English, {len(texts['de'])} German "
          "texts\n")
    language_id(texts)
    if not args.skip_serving:
        print()
        asyncio.run(serving(texts, [int(c) for c in args.concurrency.split(",")], args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
