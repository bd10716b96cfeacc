"""Public data standing in for "your own": `python -m wacht.models.examples olid-target --out F`.

OLID level C (offense target IND / GRP / OTH; ../shared/data/olid), which the default model
was never trained on. `--split train` writes the training tweets, `--split test` the held-back
official test set (keep it for the reported figures only).
"""

from __future__ import annotations

import argparse
import csv
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wacht.models.examples", description=__doc__)
    p.add_argument("example", choices=["olid-target"])
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    args = p.parse_args(argv)
    rows = olid_target(Path(args.data), args.split)
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
