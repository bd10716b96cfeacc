"""Public data standing in for "your own": `python -m wacht.models.examples olid-target --out F`.

OLID level C (offense target IND / GRP / OTH; ../shared/data/olid), which the default model
was never trained on. `--split train` writes the training tweets, `--split test` the held-back
official test set (keep it for the reported figures only).

`cad-abuse`: CAD (Reddit comments, abusive vs normal) as a 0/1 `offensive` column, the
stand-in for "your moderated comments" in `wacht models finetune --adapt toxicity`.

`toxigen-framing`, `toxigen-factual`: two more 3-class tasks the default model never saw,
from ToxiGen's human annotations (MIT; train split only, the rest is held back upstream).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from wacht.models.data import DEFAULT_DATA_DIR


def olid_target(data: Path, split: str) -> list[tuple[str, str]]:
    olid = data / "olid"
    if split == "train":
        with (olid / "olid-training-v1.0.tsv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [(r["tweet"], r["subtask_c"]) for r in rows if r["subtask_c"] in ("IND", "GRP",
                                                                                  "OTH")]
    with (olid / "testset-levelc.tsv").open(encoding="utf-8", newline="") as f:
        tweets = {r["id"]: r["tweet"] for r in csv.DictReader(f, delimiter="\t",
                                                              quoting=csv.QUOTE_NONE)}
    with (olid / "labels-levelc.csv").open(encoding="utf-8-sig", newline="") as f:
        lines = [line for line in csv.reader(f) if line and line[0] != "id"]
    return [(tweets[i], lab) for i, lab in lines]


def cad_abuse(data: Path, split: str) -> list[tuple[str, str]]:
    """CAD (Reddit) abusive vs normal as 0/1 `offensive` (train.json or val.json). The default
    model saw CAD train in its training mix (subsampled), and reports CAD val as a headline."""
    pairs = json.loads((data / "cad" / f"{split}.json").read_text(encoding="utf-8"))
    return [(str(t), "1" if label == "hatespeech" else "0") for t, label in pairs
            if str(t).strip()]


def _toxigen(data: Path, column: str, keep: dict[str, str]) -> list[tuple[str, str]]:
    rows = []
    with (data / "toxigen" / "toxigen.csv").open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            text = r["text"].strip()
            if text[:2] in ("b'", 'b"'):  # texts are stored as Python bytes literals
                text = text[2:-1]
            text = text.replace("\\n", " ").strip()
            if r[column] in keep and text:
                rows.append((text, keep[r[column]]))
    return rows


def toxigen_framing(data: Path, split: str) -> list[tuple[str, str]]:
    """ToxiGen's human `framing` of a statement about a group: moral / cause / solution
    (2,275 rows; 'disagreement' and unrated rows left out). Only the public 70% is here."""
    return _toxigen(data, "framing", {k: k for k in ("moral", "cause", "solution")})


def toxigen_factual(data: Path, split: str) -> list[tuple[str, str]]:
    """ToxiGen's human `factual?` rating: opinion / factual / neither (5,407 rows)."""
    return _toxigen(data, "factual?", {"opinion": "opinion", "factual": "factual",
                                       "neither factual nor opinion": "neither"})


EXAMPLES = {"olid-target": (olid_target, ("text", "label")),
            "cad-abuse": (cad_abuse, ("text", "offensive")),
            "toxigen-framing": (toxigen_framing, ("text", "label")),
            "toxigen-factual": (toxigen_factual, ("text", "label"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wacht.models.examples", description=__doc__)
    p.add_argument("example", choices=list(EXAMPLES))
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", choices=["train", "test", "val"],
                   help="olid-target: train | test; cad-abuse: train | val")
    p.add_argument("--rows", type=int, help="keep the first N rows (after a fixed shuffle)")
    p.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    args = p.parse_args(argv)
    read, header = EXAMPLES[args.example]
    rows = read(Path(args.data), args.split)
    if args.rows is not None:
        random.Random(13).shuffle(rows)
        rows = rows[: args.rows]
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
