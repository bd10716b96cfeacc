"""Generative explanations on real flagged texts: examples, guard fallback rate, speed (not CI).

Moderates texts from ../shared/data (TweetEval offensive val, OFF tweets) with the default model,
keeps the first `--n` the policy flags, and asks for a GENERATIVE explanation of each through the
real batcher and generation queue. Prints five examples as the Moderator returned them, the
fallback rate by reason, and generation speed.

    .venv/bin/python -m bench.explain --explainer models/explainer --n 200
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


def flagged_candidates(data: Path) -> list[str]:
    folder = data / "tweeteval" / "offensive"
    texts = (folder / "val_text.txt").read_text(encoding="utf-8").split("\n")
    labels = (folder / "val_labels.txt").read_text(encoding="utf-8").split()
    return [t.strip() for t, label in zip(texts, labels, strict=False) if label == "1" and t]


async def run(args: argparse.Namespace) -> int:
    from wacht.service.batching.batcher import Batcher, BatchingConfig  # noqa: I001
    from wacht.service.batching.generation import GenerationQueue
    from wacht.service.moderation.moderator import ModerateOptions, Moderator
    from wacht.service.moderation.policies import PolicyStore, manifest_thresholds
    from wacht.service.runtime.engine import Engine
    from wacht.service.runtime.generator import Generator

    if not (DATA / "tweeteval").is_dir():
        print(f"skipped: {DATA}/tweeteval is absent")
        return 0
    engine = Engine.load(args.model, intra_op_threads=1)
    batcher = Batcher(engine, BatchingConfig())
    await batcher.start()
    generator = Generator.load(args.explainer, intra_op_threads=args.threads)
    queue = GenerationQueue(generator, max_concurrent=1, max_waiting=args.n + 1)
    fallbacks: Counter[str] = Counter()
    moderator = Moderator(
        batcher,
        engine.manifest,
        PolicyStore.load(Path(args.policies), manifest_thresholds(engine.manifest)),
        queue,
        on_fallback=lambda reason: fallbacks.update([reason]),
    )
    flagged: list[str] = []
    pool = flagged_candidates(DATA)
    for start in range(0, len(pool), 64):
        chunk = pool[start:start + 64]
        outcomes, _, _ = await moderator.moderate(chunk, ModerateOptions(sentiment=False))
        flagged.extend(t for t, o in zip(chunk, outcomes, strict=True) if o.flagged)
        if len(flagged) >= args.n:
            break
    flagged = flagged[: args.n]
    print(f"flagged texts: {len(flagged)} (TweetEval offensive val, label OFF)")
    options = ModerateOptions(
        explanation="generative", sentiment=False, suggest_rewrite=args.rewrite
    )
    generated_chars = explain_ns = 0
    shown = 0
    started = time.perf_counter()
    explained = 0
    for text in flagged:
        fallbacks_before = sum(fallbacks.values())
        [outcome], timings, _ = await moderator.moderate([text], options)
        explanation = outcome.explanation
        assert explanation is not None
        if not outcome.flagged:  # int8 scores can move a hair with the batch it ran in
            continue
        explained += 1
        explain_ns += timings.explain_ns
        generated_chars += len(explanation.text) if not explanation.fallback else 0
        if shown < 5 and sum(fallbacks.values()) == fallbacks_before:
            shown += 1
            print(f"\n[{shown}] text: {text!r}\n    decision: {outcome.decision} "
                  f"({', '.join(r.category for r in explanation.reasons)})\n"
                  f"    explanation: {explanation.text!r}")
            if explanation.suggested_rewrite:
                print(f"    rewrite: {explanation.suggested_rewrite!r}")
    elapsed = time.perf_counter() - started
    await batcher.stop()
    total = explained
    fell = sum(fallbacks.values())
    print(f"\nfallback rate: {fell}/{total} = {100 * fell / max(1, total):.1f}%  "
          f"by reason: {dict(fallbacks)}")
    print(f"generation speed (measured by the Moderator): {moderator.speed.tokens_per_s:.1f} "
          f"tokens/s; {explain_ns / 1e9 / max(1, total):.2f}s of generation per text; "
          f"{elapsed:.0f}s wall")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "minilm-moderation"))
    parser.add_argument("--explainer", required=True)
    parser.add_argument("--policies", default=str(REPO / "policies"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rewrite", action="store_true")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
