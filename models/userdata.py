"""A user's labelled file (CSV / JSONL / Parquet) -> texts and gold labels (no torch).

Single-label: one label column holding label names. Multi-label: several 0/1 label columns
(one per label, `--label-column` repeated). Labels come from a labels file (one name a
line) or are inferred (sorted, in order of first appearance is not used: sorted names).
Every bad input raises UserDataError naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class UserDataError(ValueError):
    """The user's file cannot be used as given; the message names file, row and column."""


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    texts: list[str]
    labels: tuple[str, ...]
    # single-label: int class index per row; multi-label: 0/1 matrix [rows, labels]
    gold: np.ndarray
    multi_label: bool
    sha256: str

    def label_counts(self) -> dict[str, int]:
        if self.multi_label:
            return {n: int(self.gold[:, j].sum()) for j, n in enumerate(self.labels)}
        return {n: int(np.sum(self.gold == j)) for j, n in enumerate(self.labels)}


def _rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserDataError(f"{path}:{number}: not a JSON object: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise UserDataError(f"{path}:{number}: not a JSON object")
            rows.append(row)
        return rows
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise UserDataError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                "or convert the file to CSV / JSONL") from exc
        return pq.read_table(path).to_pylist()
    raise UserDataError(f"{path}: unknown file type {suffix!r} (use .csv, .tsv, .jsonl, .parquet)")


def read_labels_file(path: Path) -> tuple[str, ...]:
    names = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not names:
        raise UserDataError(f"{path}: labels file is empty")
    if len(set(names)) != len(names):
        raise UserDataError(f"{path}: labels file repeats a label")
    return tuple(names)


def _truthy(value: object, where: str) -> int:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no", ""):
        return 0
    raise UserDataError(f"{where}: expected 0/1, got {str(value)[:40]!r}")


def load(path: str | Path, text_column: str = "text", label_columns: tuple[str, ...] = ("label",),
         labels: tuple[str, ...] | None = None, binary_columns: bool = False) -> LabelledFile:
    """Read and check a labelled file. One label column: single-label (names); several (or
    `binary_columns`, e.g. one label of a multi-label head): multi-label, the column names are
    the labels and hold 0/1."""
    path = Path(path)
    if not path.is_file():
        raise UserDataError(f"{path}: no such file")
    rows = _rows(path)
    if not rows:
        raise UserDataError(f"{path}: no rows")
    columns = set(rows[0])
    for column in (text_column, *label_columns):
        if column not in columns:
            raise UserDataError(f"{path}: no column {column!r} (columns: {sorted(columns)})")
    texts: list[str] = []
    for i, row in enumerate(rows, 1):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise UserDataError(f"{path}: row {i}: column {text_column!r} is empty")
        texts.append(text)
    multi = binary_columns or len(label_columns) > 1
    if multi:
        names = labels or tuple(label_columns)
        if set(names) != set(label_columns):
            raise UserDataError(f"{path}: labels {list(names)} differ from the label columns "
                                f"{list(label_columns)}")
        gold = np.array([[_truthy(row.get(c), f"{path}: row {i}: column {c!r}")
                          for c in names] for i, row in enumerate(rows, 1)], dtype=np.int64)
    else:
        column = label_columns[0]
        values = [str(row.get(column) if row.get(column) is not None else "").strip()
                  for row in rows]
        names = labels or tuple(sorted({v for v in values if v}))
        index = {n: j for j, n in enumerate(names)}
        gold_list = []
        for i, v in enumerate(values, 1):
            if v not in index:
                raise UserDataError(f"{path}: row {i}: column {column!r}: label {v[:40]!r} "
                                    f"is not one of {list(names)}")
            gold_list.append(index[v])
        gold = np.array(gold_list, dtype=np.int64)
    if len(names) < 2 and not multi:
        raise UserDataError(f"{path}: only one label ({list(names)}); need at least two")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LabelledFile(path, texts, tuple(names), gold, multi, digest)
