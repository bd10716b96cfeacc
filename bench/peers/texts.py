"""Benchmark texts drawn from ../shared/data with a real length mix (stdlib only).

Tweets (TweetEval), review sentences (SST-2 dev), Reddit posts (CAD val) and Wikipedia talk
comments (Jigsaw sample): the last two are the tail of long texts, some past 512 tokens.
The draw is seeded, so every stack and every repeat sees the same texts in the same order.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

# share of each source in the mix
MIX: dict[str, float] = {"tweets": 0.60, "reviews": 0.20, "reddit": 0.15, "wikipedia": 0.05}
MAX_CHARS = 8000  # below any sane per-text byte limit; the longest texts still exceed 512 tokens


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sources(data: Path) -> dict[str, list[str]]:
    tweeteval = data / "tweeteval"
    tweets = (
        _lines(tweeteval / "offensive" / "test_text.txt")
        + _lines(tweeteval / "hate" / "test_text.txt")
        + _lines(tweeteval / "sentiment" / "val_text.txt")
    )
    with (data / "sst2" / "dev.tsv").open(encoding="utf-8") as f:
        reviews = [row["text"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    reddit = [text for text, _ in json.loads((data / "cad" / "val.json").read_text("utf-8"))]
    with (data / "jigsaw-sample" / "valid.csv").open(encoding="utf-8", newline="") as f:
        wikipedia = [row["comment_text"] for row in csv.DictReader(f)]
    out = {"tweets": tweets, "reviews": reviews, "reddit": reddit, "wikipedia": wikipedia}
    return {name: [t[:MAX_CHARS] for t in texts if t.strip()] for name, texts in out.items()}


def find_data(start: Path | None = None) -> Path:
    """../shared/data relative to the repository root."""
    root = (start or Path(__file__)).resolve().parents[2]
    return root.parent / "shared" / "data"


def load_texts(data: Path, count: int = 4096, seed: int = 0) -> list[str]:
    sources = _sources(data)
    rng = random.Random(seed)
    names = list(MIX)
    weights = [MIX[n] for n in names]
    return [rng.choice(sources[name]) for name in rng.choices(names, weights, k=count)]


def describe(texts: list[str]) -> dict[str, float]:
    words = sorted(len(t.split()) for t in texts)

    def pct(q: float) -> float:
        return float(words[min(len(words) - 1, int(q * len(words)))])

    return {
        "texts": len(texts),
        "words_p50": pct(0.5),
        "words_p90": pct(0.9),
        "words_p99": pct(0.99),
        "words_max": float(words[-1]),
        "share_over_300_words": sum(w > 300 for w in words) / len(words),
    }


if __name__ == "__main__":
    print(json.dumps(describe(load_texts(find_data())), indent=1))
