"""Evidence-span quality on constructed examples (not CI).

../shared/data has no human rationales (the HateXplain copy keeps text and label only; see
hatexplain/SOURCE.txt), so token-level F1 against rationales cannot be measured here. Instead:
take offensive words and phrases the training data itself marks (highest log-odds of appearing
in TweetEval-offensive OFF vs NOT tweets), insert one at a random word boundary of a benign
SST-2 sentence the model allows, moderate with evidence spans through the real batcher, and
compare the spans with the inserted phrase:

- flagged: share of constructed texts the model flags at all (only these get spans);
- top-1 hit: the top span of the top flagged category overlaps the inserted phrase;
- top-1 exact: ... and covers exactly its words;
- word F1 (top-1 / all spans): word-level F1 of the top span (or all the category's spans)
  against the inserted phrase's words, averaged over flagged texts;
- random top-1 hit: what a random word would score (the chance baseline).

    .venv/bin/python -m bench.spans --n 200
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
WORD = re.compile(r"[a-z][a-z']*")
SKIP = {"user", "url", "amp", "rt"}


def offensive_phrases(data: Path, min_df: int = 25, min_ratio: float = 5.0) -> list[str]:
    """Words and bigrams at least `min_ratio` times more frequent in TweetEval-offensive OFF
    tweets than in NOT tweets (document frequency), most over-represented first."""
    folder = data / "tweeteval" / "offensive"
    texts = (folder / "train_text.txt").read_text(encoding="utf-8").split("\n")
    labels = (folder / "train_labels.txt").read_text(encoding="utf-8").split()
    df = {0: Counter(), 1: Counter()}
    docs = Counter()
    for text, label in zip(texts, labels, strict=False):
        words = [w for w in WORD.findall(text.lower()) if w not in SKIP]
        grams = set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}
        df[int(label)].update(grams)
        docs[int(label)] += 1
    scored = []
    for gram, off in df[1].items():
        if off < min_df:
            continue
        ratio = math.log((off + 0.5) / docs[1]) - math.log((df[0][gram] + 0.5) / docs[0])
        if ratio >= math.log(min_ratio):
            scored.append((ratio, gram))
    scored.sort(reverse=True)
    return [gram for _, gram in scored]


def carriers(data: Path) -> list[str]:
    rows = (data / "sst2" / "dev.tsv").read_text(encoding="utf-8").split("\n")[1:]
    out = []
    for row in rows:
        text = row.split("\t")[0].strip()
        if 8 <= len(text.split()) <= 30:
            out.append(text)
    return out


def insert(text: str, phrase: str, rng: random.Random) -> tuple[str, int, int]:
    words = text.split(" ")
    at = rng.randint(0, len(words))
    before = " ".join(words[:at])
    begin = len(before) + (1 if before else 0)
    built = " ".join(words[:at] + [phrase] + words[at:])
    return built, begin, begin + len(phrase)


def unit_set(units: list[Any], begin: int, end: int) -> set[int]:
    return {i for i, u in enumerate(units) if u.begin < end and begin < u.end}


def f1(pred: set[int], gold: set[int]) -> float:
    hit = len(pred & gold)
    if not hit:
        return 0.0
    p, r = hit / len(pred), hit / len(gold)
    return 2 * p * r / (p + r)


async def make_batcher(model: Path) -> tuple[Any, Any]:
    from wacht.service.batching.batcher import Batcher, BatchingConfig
    from wacht.service.runtime.engine import Engine

    engine = Engine.load(model, intra_op_threads=2)
    batcher = Batcher(engine, BatchingConfig())
    await batcher.start()
    return engine, batcher


async def run(args: argparse.Namespace) -> int:
    from wacht.service.moderation.moderator import ModerateOptions, Moderator
    from wacht.service.moderation.policies import PolicyStore, manifest_thresholds
    from wacht.service.moderation.spans import SpanConfig, word_units

    if not (DATA / "tweeteval").is_dir() or not (DATA / "sst2").is_dir():
        print(f"skipped: {DATA} lacks tweeteval/ or sst2/")
        return 0
    print("human rationales: none in ../shared/data (hatexplain/SOURCE.txt: 'TEXT + MAJORITY "
          "LABEL ONLY (no rationales ...)'), so no rationale F1; constructed examples instead.")
    engine, batcher = await make_batcher(Path(args.model))
    policies = PolicyStore.load(Path(args.policies), manifest_thresholds(engine.manifest))
    moderator = Moderator(
        batcher, engine.manifest, policies,
        spans=SpanConfig(max_variants=args.max_variants, mask=args.mask),
    )
    rng = random.Random(args.seed)
    phrases = offensive_phrases(DATA)
    print(f"phrases ({len(phrases)}): {', '.join(phrases)}")
    options = ModerateOptions(policy=args.policy, sentiment=False)
    pool = carriers(DATA)
    rng.shuffle(pool)
    benign = []
    for start in range(0, len(pool), 64):
        chunk = pool[start:start + 64]
        outcomes, _, _ = await moderator.moderate(chunk, options)
        benign.extend(t for t, o in zip(chunk, outcomes, strict=True) if not o.flagged)
        if len(benign) >= args.n:
            break
    print(f"benign carriers: {len(benign)} of {min(len(pool), start + 64)} SST-2 dev sentences "
          "are allowed by the model")
    cases = []
    for i in range(args.n):
        phrase = phrases[i % len(phrases)]
        cases.append((phrase, *insert(benign[i % len(benign)], phrase, rng)))
    span_options = ModerateOptions(policy=args.policy, sentiment=False, evidence_spans=True)
    hits = exact = flagged = 0
    f1_top: list[float] = []
    f1_all: list[float] = []
    chance: list[float] = []
    variants: list[int] = []
    by_phrase: dict[str, list[int]] = {}
    started = time.perf_counter()
    for start in range(0, len(cases), 16):
        batch = cases[start:start + 16]
        outcomes, timings, _ = await moderator.moderate([c[1] for c in batch], span_options)
        n_flagged = sum(o.flagged for o in outcomes)
        if n_flagged:
            variants.append(timings.span_variants // n_flagged)
        for (phrase, text, begin, end), outcome in zip(batch, outcomes, strict=True):
            if not outcome.flagged:
                by_phrase.setdefault(phrase, []).append(0)
                continue
            flagged += 1
            units = word_units(text)
            gold = unit_set(units, begin, end)
            chance.append(len(gold) / len(units))
            top_category = max(
                (c for c in outcome.categories if c.flagged), key=lambda c: c.score
            ).category
            spans = [s for s in outcome.spans if s.category == top_category]
            if not spans:
                f1_top.append(0.0)
                f1_all.append(0.0)
                by_phrase.setdefault(phrase, []).append(0)
                continue
            top = unit_set(units, spans[0].begin, spans[0].end)
            every = set().union(*(unit_set(units, s.begin, s.end) for s in spans))
            hit = bool(top & gold)
            hits += hit
            exact += top == gold
            by_phrase.setdefault(phrase, []).append(1 if hit else 0)
            f1_top.append(f1(top, gold))
            f1_all.append(f1(every, gold))
    elapsed = time.perf_counter() - started
    await batcher.stop()
    if not flagged:
        print("no constructed text was flagged")
        return 1

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    print(f"\nconstructed texts: {len(cases)}  flagged: {flagged} ({pct(flagged / len(cases))})")
    baseline = pct(statistics.mean(chance))
    print(f"top-1 hit:        {pct(hits / flagged)}   (random word: {baseline})")
    print(f"top-1 exact:      {pct(exact / flagged)}")
    print(f"word F1 top-1:    {statistics.mean(f1_top):.3f}")
    print(f"word F1 all spans:{statistics.mean(f1_all):.3f}")
    print(f"variants / flagged text: mean {statistics.mean(variants):.1f} "
          f"(bound {args.max_variants}); {elapsed:.1f}s for {len(cases)} texts")
    misses = sorted(
        ((sum(v) / len(v), p) for p, v in by_phrase.items() if v), key=lambda x: x[0]
    )[:8]
    print("weakest phrases (hit rate incl. unflagged): "
          + ", ".join(f"{p!r} {pct(r)}" for r, p in misses))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "minilm-moderation"))
    parser.add_argument("--policies", default=str(REPO / "policies"))
    parser.add_argument("--policy", default="")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-variants", type=int, default=48)
    parser.add_argument("--mask", default="", help="replacement for a masked word ('' deletes)")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
