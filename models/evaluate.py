"""Evaluate a model directory through the server's own path (`Engine.predict`, onnxruntime).

    wacht models eval MODEL_DIR [--data DIR] [--json] [--out metrics.json]

Per dataset: accuracy and macro-F1 (sentiment: argmax; toxicity: the manifest's default
thresholds), and per-label ROC-AUC for the multi-label head. No torch needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from wacht.models.data import EvalSet, evaluation_sets
from wacht.models.thresholds import macro_f1, roc_auc

SENTIMENT_TASK = "sentiment"
TOXICITY_TASK = "toxicity"


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def score_sets(model_dir: Path, sets: list[EvalSet], threads: int = 2
               ) -> tuple[dict[str, np.ndarray], dict]:
    """Scores (probabilities, manifest label order) per set name for the set's task."""
    from wacht.service.runtime.engine import Engine

    engine = Engine.load(model_dir, intra_op_threads=threads)
    out: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    texts = 0
    for s in sets:
        results = engine.predict(s.texts)
        out[s.name] = np.stack([r.scores[s.task] for r in results])
        texts += len(s.texts)
    info = {"texts": texts, "seconds": round(time.perf_counter() - started, 1),
            "providers": engine.providers}
    return out, {"engine": info, "manifest": engine.manifest}


def sentiment_metrics(s: EvalSet, scores: np.ndarray) -> dict:
    gold = np.asarray(s.gold)
    if s.binary:
        # only negative/positive are gold: compare those two probabilities
        pred = np.where(scores[:, 2] > scores[:, 0], 2, 0)
        gold_b, pred_b = (gold == 2).astype(int), (pred == 2).astype(int)
        return {"task": s.task, "n": len(gold), "accuracy": _r(np.mean(gold == pred)),
                "macro_f1": _r(macro_f1(gold_b, pred_b, 2)),
                "roc_auc": _r(roc_auc(gold_b, scores[:, 2] - scores[:, 0]))}
    pred = scores.argmax(1)
    return {"task": s.task, "n": len(gold), "accuracy": _r(np.mean(gold == pred)),
            "macro_f1": _r(macro_f1(gold, pred, scores.shape[1]))}


def toxicity_metrics(s: EvalSet, scores: np.ndarray, labels: list[str],
                     thresholds: dict[str, float]) -> dict:
    assert isinstance(s.gold, dict)
    per_label = {}
    for name, gold_list in s.gold.items():
        gold = np.asarray(gold_list)
        keep = gold >= 0
        g = gold[keep]
        col = scores[keep, labels.index(name)]
        pred = (col >= thresholds[name]).astype(int)
        per_label[name] = {
            "n": int(keep.sum()), "positives": int(g.sum()), "threshold": thresholds[name],
            "accuracy": _r(np.mean(g == pred)), "macro_f1": _r(macro_f1(g, pred, 2)),
            "roc_auc": _r(roc_auc(g, col)),
        }
    primary = per_label[next(iter(s.gold))]
    aucs = [v["roc_auc"] for v in per_label.values() if v["roc_auc"] is not None]
    return {"task": s.task, "n": len(s.texts), "primary_label": next(iter(s.gold)),
            "accuracy": primary["accuracy"], "macro_f1": primary["macro_f1"],
            "mean_roc_auc": _r(np.mean(aucs)) if aucs else None, "labels": per_label}


def decisions(s: EvalSet, scores: np.ndarray, labels: list[str],
              thresholds: dict[str, float]) -> np.ndarray:
    """The labels a user would see: sentiment argmax, or 0/1 per toxicity label of the set."""
    if s.task == SENTIMENT_TASK:
        return scores.argmax(1)[:, None]
    assert isinstance(s.gold, dict)
    cols = [labels.index(n) for n in s.gold]
    return np.stack([scores[:, c] >= thresholds[labels[c]] for c in cols], 1).astype(int)


def evaluate(model_dir: str | Path, data: str | Path, threads: int = 2,
             extra_sets: list[EvalSet] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, decisions per set) for every evaluation set present under `data`
    (plus `extra_sets`, e.g. the German sets a multilingual recipe reports)."""
    sets = evaluation_sets(Path(data)) + list(extra_sets or [])
    scores, info = score_sets(Path(model_dir), sets, threads)
    manifest = info["manifest"]
    tox = manifest.task(TOXICITY_TASK) if TOXICITY_TASK in {t.name for t in manifest.tasks} \
        else None
    labels = list(tox.label_names) if tox else []
    thresholds = {lab.name: lab.threshold for lab in tox.labels} if tox else {}
    datasets = {}
    decided: dict[str, np.ndarray] = {}
    for s in sets:
        if s.task == SENTIMENT_TASK:
            datasets[s.name] = {**sentiment_metrics(s, scores[s.name]),
                                "description": s.description}
        else:
            datasets[s.name] = {**toxicity_metrics(s, scores[s.name], labels, thresholds),
                                "description": s.description}
        decided[s.name] = decisions(s, scores[s.name], labels, thresholds)
    metrics = {
        "model": manifest.name, "version": manifest.version, "precision": manifest.precision,
        "engine": info["engine"], "datasets": datasets,
    }
    return metrics, decided


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of identical user-visible label decisions, per set (sentiment: one per text;
    toxicity: one per text and label of the set)."""
    return {name: round(float(np.mean(a[name] == b[name])), 4)
            for name in a if name in b}


def headline(metrics: dict, min_positives: int = 50) -> dict[str, float]:
    """Accuracy and macro-F1 per set, ROC-AUC per label with at least `min_positives` positives
    (a label with a handful of positives, e.g. Jigsaw identity_hate with 9, swings by points
    on a single text)."""
    out: dict[str, float] = {}
    for name, d in metrics["datasets"].items():
        out[f"{name}/accuracy"] = d["accuracy"]
        out[f"{name}/macro_f1"] = d["macro_f1"]
        for label, lab in d.get("labels", {}).items():
            if lab["positives"] >= min_positives and lab["roc_auc"] is not None:
                out[f"{name}/{label}/roc_auc"] = lab["roc_auc"]
    return out


def worse_than(candidate: dict, reference: dict, points: float = 0.01) -> dict[str, tuple]:
    """Headline metrics where `candidate` is more than `points` below `reference`."""
    a, b = headline(candidate), headline(reference)
    return {k: (a[k], b[k]) for k in a if k in b and a[k] < b[k] - points}


def summary_table(metrics_by_precision: dict[str, dict]) -> str:
    """Markdown table: one row per dataset/label, one column pair per precision."""
    precisions = list(metrics_by_precision)
    head = "| dataset | label | n | " + " | ".join(
        f"{p} acc | {p} macro-F1 | {p} ROC-AUC" for p in precisions) + " |"
    sep = "|" + "---|" * (3 + 3 * len(precisions))
    lines = [head, sep]
    first = metrics_by_precision[precisions[0]]["datasets"]

    def cell(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for name, d in first.items():
        if d["task"] == SENTIMENT_TASK:
            row = [name, "sentiment (binary)" if "roc_auc" in d else "sentiment (3-class)",
                   str(d["n"])]
            for p in precisions:
                m = metrics_by_precision[p]["datasets"][name]
                row += [cell(m["accuracy"]), cell(m["macro_f1"]), cell(m.get("roc_auc"))]
            lines.append("| " + " | ".join(row) + " |")
            continue
        for label, lab in d["labels"].items():
            row = [name, label, str(lab["n"])]
            for p in precisions:
                m = metrics_by_precision[p]["datasets"][name]["labels"][label]
                row += [cell(m["accuracy"]), cell(m["macro_f1"]), cell(m["roc_auc"])]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(model_dir: str, data: str, as_json: bool, out: str | None, threads: int = 2) -> int:
    metrics, _ = evaluate(model_dir, data, threads)
    if not metrics["datasets"]:
        print(f"no evaluation data found under {data}")
        return 1
    if out:
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['model']} {metrics['version']} ({metrics['precision']}), "
              f"{metrics['engine']['texts']} texts in {metrics['engine']['seconds']} s")
        print(summary_table({metrics["precision"]: metrics}))
    return 0
