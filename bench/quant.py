"""int8 vs fp32 throughput of the default model through the server's Engine (not run in CI).

    python -m bench.quant [--int8 models/minilm-moderation] [--fp32 DIR] [--threads 2]

The fp32 directory is what `python -m wacht.models.build --variant fp32 --out DIR` writes (the build
also leaves one at /tmp/wacht-build/fp32-dir). Texts: the evaluation sets of ../shared/data
(tweets, movie-review sentences, Reddit, Gab), shuffled with a fixed seed, so batches have the
real length mix. A batch of b texts is b consecutive texts padded to their longest, one forward.
Prints texts/s per batch size for each precision and the int8/fp32 ratio. Rounds alternate
between the two models so background load hits both alike.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 4, 32)


def real_texts(count: int, seed: int = 0) -> list[str]:
    from wacht.models.data import DEFAULT_DATA_DIR, evaluation_sets

    texts = [t for s in evaluation_sets(DEFAULT_DATA_DIR) for t in s.texts]
    if not texts:
        raise SystemExit(f"no texts under {DEFAULT_DATA_DIR}")
    random.Random(seed).shuffle(texts)
    return texts[:count]


def texts_per_second(engine, windows: list[list[int]], batch: int, seconds: float) -> float:
    batches = [windows[i : i + batch] for i in range(0, len(windows) - batch + 1, batch)]
    engine.forward(batches[0])
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for b in batches:
            engine.forward(b)
            done += len(b)
            if time.perf_counter() - started >= seconds:
                break
    return done / (time.perf_counter() - started)


def main() -> int:
    from wacht.service.runtime.engine import Engine

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--int8", default=str(REPO_ROOT / "models" / "minilm-moderation"))
    p.add_argument("--fp32", default="/tmp/wacht-build/fp32-dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=3.0, help="per model, batch size and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    engines = {name: Engine.load(path, intra_op_threads=args.threads)
               for name, path in (("int8", args.int8), ("fp32", args.fp32))}
    texts = real_texts(args.texts)
    windows = [e.windows[0] for e in engines["int8"].encode(texts, truncation="head")]
    lengths = sorted(len(w) for w in windows)
    print(f"{len(windows)} texts, tokens median {lengths[len(lengths) // 2]}, "
          f"p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]}; {args.threads} threads")
    print(f"{'batch':>5} {'int8 texts/s':>13} {'fp32 texts/s':>13} {'int8/fp32':>10}")
    for batch in BATCH_SIZES:
        best = {name: 0.0 for name in engines}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                best[name] = max(best[name],
                                 texts_per_second(engine, windows, batch, args.seconds))
        print(f"{batch:>5} {best['int8']:>13.1f} {best['fp32']:>13.1f} "
              f"{best['int8'] / best['fp32']:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
