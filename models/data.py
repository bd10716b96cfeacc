"""Readers for ../shared/data and the label mapping onto the default model's heads.

No torch here: the evaluation command runs in the serving environment. Every dataset's
SOURCE.txt describes the format; the traps it lists (QUOTE_NONE TSVs, empty tweets, HTML
entities, b'...' wrappers) are handled here. Splits we make ourselves are deterministic
(a hash of the text), so training and evaluation always see the same partition.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from wacht.models import TOXICITY_LABELS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

NEG, NEU, POS = range(3)
OFF, HATE, INSULT, PROFANITY = range(4)
Tox = tuple[float | None, float | None, float | None, float | None]
UNLABELLED: Tox = (None, None, None, None)


@dataclass(frozen=True)
class Example:
    """One training text. `sentiment` indexes SENTIMENT_LABELS (-1: none); `sentiment_binary`
    means the source only knows negative/positive, so the loss ignores the neutral logit.
    `toxicity` holds one target per TOXICITY_LABELS entry, None where the source is silent."""

    text: str
    source: str
    sentiment: int = -1
    sentiment_binary: bool = False
    toxicity: Tox = UNLABELLED


@dataclass
class EvalSet:
    """Texts with gold labels for one task. For sentiment `gold` holds one class index per
    text; `binary` means only negative/positive are gold (argmax over those two). For
    toxicity `gold` maps a label name to 0/1 per text (-1 where unknown)."""

    name: str
    task: str
    texts: list[str]
    gold: list[int] | dict[str, list[int]]
    binary: bool = False
    description: str = ""
    metadata: dict[str, object] = field(default_factory=dict)


def split_bucket(text: str, buckets: int = 100) -> int:
    """Deterministic bucket in [0, buckets) from the text alone."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % buckets


def _lines(path: Path) -> list[str]:
    # Split on '\n' only and drop the final empty line: empty tweets are real rows.
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def tweeteval(data: Path, task: str, split: str) -> list[tuple[str, int]]:
    folder = data / "tweeteval" / task
    texts = _lines(folder / f"{split}_text.txt")
    labels = [int(x) for x in _lines(folder / f"{split}_labels.txt")]
    if len(texts) != len(labels):
        raise ValueError(f"{folder}/{split}: {len(texts)} texts but {len(labels)} labels")
    return list(zip(texts, labels, strict=True))


def _olid_key(text: str) -> str:
    # TweetEval lower-cases @USER and trims whitespace; compare letters and digits only.
    return re.sub(r"[^0-9a-z]+", "", text.lower().replace("@user", "").replace("url", ""))


def _read_tsv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def olid_training_level_b(data: Path) -> dict[str, str]:
    """OLID training tweets (normalised text) -> level B label (TIN/UNT/NULL). Conflicting
    duplicates map to "" so they stay masked."""
    rows = _read_tsv(data / "olid" / "olid-training-v1.0.tsv")[1:]
    out: dict[str, str] = {}
    for row in rows:
        key = _olid_key(row[1])
        label = row[3] if row[2] == "OFF" else "NOT"
        out[key] = label if out.get(key, label) == label else ""
    return out


def _offensive_example(text: str, offensive: int, level_b: dict[str, str], source: str) -> Example:
    b = level_b.get(_olid_key(text), "")
    insult: float | None
    profanity: float | None
    if offensive == 0 and b == "NOT":
        insult, profanity = 0.0, 0.0
    elif offensive == 1 and b in ("TIN", "UNT"):
        insult, profanity = float(b == "TIN"), float(b == "UNT")
    else:
        insult = profanity = None
    return Example(text, source, toxicity=(float(offensive), None, insult, profanity))


def sentiment_split(data: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """TweetEval sentiment val (the only 3-class data) -> (~80% train, ~20% held-out eval)."""
    rows = tweeteval(data, "sentiment", "val")
    train = [r for r in rows if split_bucket(r[0]) >= 20]
    held = [r for r in rows if split_bucket(r[0]) < 20]
    return train, held


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def davidson_rows(data: Path) -> list[tuple[str, int]]:
    rows = _read_csv(data / "davidson" / "labeled_data.csv")
    return [(html.unescape(r["tweet"]), int(r["class"])) for r in rows]


def davidson_split(data: Path, split: str) -> list[tuple[str, int]]:
    """80/10/10 by text hash: train < 80, val 80..89, test >= 90."""
    lo, hi = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}[split]
    return [r for r in davidson_rows(data) if lo <= split_bucket(r[0]) < hi]


def _davidson_tox(label: int) -> Tox:
    return {0: (1.0, 1.0, None, None), 1: (1.0, 0.0, None, None), 2: (0.0, 0.0, None, None)}[label]


def _json_pairs(path: Path) -> list[tuple[str, str]]:
    return [(str(t), str(label)) for t, label in json.loads(path.read_text(encoding="utf-8"))]


_HATEXPLAIN = {
    "hatespeech": (1.0, 1.0, None, None),
    "offensive": (1.0, 0.0, None, None),
    "normal": (0.0, 0.0, None, None),
}
_CAD = {"hatespeech": (1.0, None, None, None), "normal": (0.0, 0.0, None, None)}


def _strip_bytes_literal(text: str) -> str:
    if len(text) >= 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        text = text[2:-1]
        text = text.replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')
    return text.strip()


def toxigen_rows(data: Path) -> list[tuple[str, int]]:
    """Human toxicity >= 4 -> 1, <= 2 -> 0, in between dropped."""
    out = []
    for r in _read_csv(data / "toxigen" / "toxigen.csv"):
        score = float(r["toxicity_human"])
        if score >= 4 or score <= 2:
            out.append((_strip_bytes_literal(r["text"]), int(score >= 4)))
    return out


def toxigen_split(data: Path, split: str) -> list[tuple[str, int]]:
    rows = toxigen_rows(data)
    return [r for r in rows if (split_bucket(r[0]) < 90) == (split == "train")]


def _nonempty(examples: Iterable[Example]) -> list[Example]:
    return [e for e in examples if e.text.strip()]


def training_sources(data: Path) -> dict[str, list[Example]]:
    """Every training example, grouped by source. Only train splits (and our own hash splits)."""
    level_b = olid_training_level_b(data)
    sources: dict[str, list[Example]] = {}
    sources["sst2"] = [
        Example(r["text"], "sst2", sentiment=POS if r["label"] == "1" else NEG,
                sentiment_binary=True)
        for r in _read_tsv_dicts(data / "sst2" / "train.tsv")
    ]
    train, _ = sentiment_split(data)
    sources["tweeteval_sentiment"] = [Example(t, "tweeteval_sentiment", sentiment=y)
                                      for t, y in train]
    sources["tweeteval_offensive"] = [
        _offensive_example(t, y, level_b, "tweeteval_offensive")
        for t, y in tweeteval(data, "offensive", "train")
    ]
    sources["tweeteval_hate"] = [
        Example(t, "tweeteval_hate", toxicity=(1.0, 1.0, None, None) if y else
                (None, 0.0, None, None))
        for t, y in tweeteval(data, "hate", "train")
    ]
    sources["davidson"] = [Example(t, "davidson", toxicity=_davidson_tox(y))
                           for t, y in davidson_split(data, "train")]
    sources["hatexplain"] = [Example(t, "hatexplain", toxicity=_HATEXPLAIN[y])
                             for t, y in _json_pairs(data / "hatexplain" / "train.json")]
    sources["cad"] = [Example(t, "cad", toxicity=_CAD[y])
                      for t, y in _json_pairs(data / "cad" / "train.json")]
    sources["toxigen"] = [Example(t, "toxigen", toxicity=(float(y), float(y), None, None))
                          for t, y in toxigen_split(data, "train")]
    return {name: _nonempty(rows) for name, rows in sources.items()}


# GermEval 2018 fine labels onto the toxicity head (offensive, hate, insult, profanity).
# OFFENSE is the coarse label = offensive. ABUSE (degrading a person or group, typically for
# group membership) is the closest GermEval has to hate; it says nothing about insult or
# profanity, which stay masked. INSULT and PROFANITY rows are not ABUSE (the fine labels are
# exclusive), so hate is 0 there; an INSULT row says nothing about profanity.
GERMEVAL_FINE: dict[str, Tox] = {
    "OTHER": (0.0, 0.0, 0.0, 0.0),
    "ABUSE": (1.0, 1.0, None, None),
    "INSULT": (1.0, 0.0, 1.0, None),
    "PROFANITY": (1.0, 0.0, 0.0, 1.0),
}
# Our partition of germeval2018.training.txt by text hash (the official test file is held back):
# dev (report) < 15 <= val (thresholds) < 25 <= train.
GERMEVAL_SPLITS = {"dev": (0, 15), "val": (15, 25), "train": (25, 100)}


def germeval_rows(data: Path) -> list[tuple[str, str, str]]:
    """(text, coarse, fine) from the GermEval 2018 training file; |LBR| -> newline."""
    rows = _read_tsv(data / "germeval2018" / "germeval2018.training.txt")
    return [(r[0].replace("|LBR|", "\n").strip(), r[1], r[2]) for r in rows if len(r) >= 3]


def germeval_split(data: Path, split: str) -> list[tuple[str, str, str]]:
    lo, hi = GERMEVAL_SPLITS[split]
    return [r for r in germeval_rows(data) if lo <= split_bucket(r[0]) < hi]


def germeval_sources(data: Path) -> dict[str, list[Example]]:
    rows = germeval_split(data, "train")
    return {"germeval": _nonempty(Example(t, "germeval", toxicity=GERMEVAL_FINE[fine])
                                  for t, _, fine in rows)}


def germeval_set(data: Path, split: str) -> EvalSet:
    rows = germeval_split(data, split)
    return _tox_set(f"germeval_{split}", [(t, GERMEVAL_FINE[fine]) for t, _, fine in rows],
                    TOXICITY_LABELS,
                    f"GermEval 2018 (German tweets), our {split} split of the training file "
                    f"({len(rows)}): OFFENSE -> offensive, ABUSE -> hate, INSULT -> insult, "
                    "PROFANITY -> profanity")


def _read_tsv_dicts(path: Path) -> list[dict[str, str]]:
    rows = _read_tsv(path)
    header = rows[0]
    return [dict(zip(header, r, strict=False)) for r in rows[1:] if r]


def epoch_sample(
    sources: dict[str, list[Example]], caps: dict[str, int], rng: random.Random
) -> list[Example]:
    """One epoch's examples: each source subsampled to its cap (all of it when uncapped)."""
    out: list[Example] = []
    for name, rows in sources.items():
        cap = caps.get(name)
        out.extend(rng.sample(rows, cap) if cap is not None and cap < len(rows) else rows)
    rng.shuffle(out)
    return out


def _tox_gold(rows: list[Tox], labels: Iterable[str]) -> dict[str, list[int]]:
    gold: dict[str, list[int]] = {}
    for name in labels:
        i = TOXICITY_LABELS.index(name)
        gold[name] = [-1 if r[i] is None else int(r[i]) for r in rows]
    return gold


def _tox_set(name: str, pairs: list[tuple[str, Tox]], labels: Iterable[str],
             description: str) -> EvalSet:
    pairs = [p for p in pairs if p[0].strip()]
    return EvalSet(name, "toxicity", [t for t, _ in pairs],
                   _tox_gold([y for _, y in pairs], labels), description=description)


def validation_sets(data: Path) -> list[EvalSet]:
    """Held-out sets used to pick the default decision thresholds (never the test sets)."""
    level_b = olid_training_level_b(data)
    offensive = [_offensive_example(t, y, level_b, "") for t, y in
                 tweeteval(data, "offensive", "val")]
    hate = tweeteval(data, "hate", "val")
    dav = davidson_split(data, "val")
    return [
        _tox_set("tweeteval_offensive_val", [(e.text, e.toxicity) for e in offensive],
                 ("offensive", "insult", "profanity"), "TweetEval offensive val + OLID level B"),
        _tox_set("tweeteval_hate_val", [(t, (None, float(y), None, None)) for t, y in hate],
                 ("hate",), "TweetEval hate val"),
        _tox_set("davidson_val", [(t, _davidson_tox(y)) for t, y in dav],
                 ("offensive", "hate"), "Davidson, our 10% val split"),
    ]


def _olid_test(data: Path) -> list[tuple[str, Tox]]:
    folder = data / "olid"
    tweets = {r[0]: r[1] for r in _read_tsv(folder / "testset-levela.tsv")[1:]}

    def labels(name: str) -> dict[str, str]:
        with (folder / name).open(encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and r[0] != "id"]
        return {r[0]: r[1] for r in rows}

    a, b = labels("labels-levela.csv"), labels("labels-levelb.csv")
    out: list[tuple[str, Tox]] = []
    for tid, text in tweets.items():
        if a[tid] == "NOT":
            out.append((text, (0.0, None, 0.0, 0.0)))
        else:
            out.append((text, (1.0, None, float(b[tid] == "TIN"), float(b[tid] == "UNT"))))
    return out


def jigsaw_rows(data: Path) -> list[tuple[str, Tox]]:
    """Jigsaw sample (train.csv + test_proced.csv; valid.csv repeats train): out-of-domain."""
    folder = data / "jigsaw-sample"
    seen: set[str] = set()
    out: list[tuple[str, Tox]] = []
    for name in ("train.csv", "test_proced.csv"):
        for r in _read_csv(folder / name):
            if r["id"] in seen:
                continue
            seen.add(r["id"])
            out.append((r["comment_text"], (float(r["toxic"]), float(r["identity_hate"]),
                                            float(r["insult"]), float(r["obscene"]))))
    return out


def evaluation_sets(data: Path) -> list[EvalSet]:
    """Every evaluation set the card reports. Missing dataset folders are skipped."""
    sets: list[EvalSet] = []

    def add(folder: str, build) -> None:  # noqa: ANN001
        if (data / folder).is_dir():
            sets.append(build())

    add("sst2", lambda: EvalSet(
        "sst2_dev", "sentiment",
        [r["text"] for r in _read_tsv_dicts(data / "sst2" / "dev.tsv")],
        [POS if r["label"] == "1" else NEG for r in _read_tsv_dicts(data / "sst2" / "dev.tsv")],
        binary=True, description="GLUE SST-2 dev (872), argmax over negative/positive"))

    def sentiment_held() -> EvalSet:
        _, held = sentiment_split(data)
        return EvalSet("tweeteval_sentiment_heldout", "sentiment", [t for t, _ in held],
                       [y for _, y in held],
                       description=f"TweetEval sentiment val, our held-out 20% ({len(held)})")

    add("tweeteval/sentiment", sentiment_held)
    add("tweeteval/offensive", lambda: _tox_set(
        "tweeteval_offensive_test",
        [(t, (float(y), None, None, None)) for t, y in tweeteval(data, "offensive", "test")],
        ("offensive",), "TweetEval offensive test = OLID test A (860)"))
    add("olid", lambda: _tox_set(
        "olid_test", _olid_test(data), ("offensive", "insult", "profanity"),
        "OLID test levels A+B (860): TIN -> insult, UNT -> profanity"))
    add("tweeteval/hate", lambda: _tox_set(
        "tweeteval_hate_test",
        [(t, (None, float(y), None, None)) for t, y in tweeteval(data, "hate", "test")],
        ("hate",), "TweetEval hate test (2,970; HatEval 2019, distribution shift)"))
    add("davidson", lambda: _tox_set(
        "davidson_test", [(t, _davidson_tox(y)) for t, y in davidson_split(data, "test")],
        ("offensive", "hate"), "Davidson, our 10% test split"))
    add("hatexplain", lambda: _tox_set(
        "hatexplain_val",
        [(t, _HATEXPLAIN[y]) for t, y in _json_pairs(data / "hatexplain" / "val.json")],
        ("offensive", "hate"), "HateXplain val (1,922)"))
    add("cad", lambda: _tox_set(
        "cad_val", [(t, _CAD[y]) for t, y in _json_pairs(data / "cad" / "val.json")],
        ("offensive",), "CAD val (4,526), abusive vs normal"))
    add("toxigen", lambda: _tox_set(
        "toxigen_test", [(t, (float(y), float(y), None, None))
                         for t, y in toxigen_split(data, "test")],
        ("offensive", "hate"), "ToxiGen human-rated, our 10% split (>=4 toxic, <=2 benign)"))
    add("jigsaw-sample", lambda: _tox_set(
        "jigsaw_sample", jigsaw_rows(data), TOXICITY_LABELS,
        "Jigsaw sample (518, Wikipedia; out-of-domain): toxic/identity_hate/insult/obscene"))
    return sets

