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


def confusion(gold: np.ndarray, pred: np.ndarray, classes: int) -> list[list[int]]:
    """rows: gold class, columns: predicted class."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (gold, pred), 1)
    return m.tolist()


def file_metrics(task, scores: np.ndarray, gold: np.ndarray) -> dict:  # noqa: ANN001
    """Metrics of one task on a user's file. Softmax: `gold` holds class indices in task label
    order (argmax decides); sigmoid: a 0/1 matrix [rows, labels] (label thresholds decide)."""
    names = list(task.label_names)
    per_label = {}
    if task.activation == "softmax":
        pred = scores.argmax(1)
        for j, name in enumerate(names):
            g, p = (gold == j).astype(int), (pred == j).astype(int)
            per_label[name] = {"n": int(g.sum()), "accuracy": _r(np.mean(g == p)),
                               "f1": _r(_binary_f1(g, p)),
                               "roc_auc": _r(roc_auc(g, scores[:, j]))}
        return {"task": task.name, "n": len(gold), "accuracy": _r(np.mean(gold == pred)),
                "macro_f1": _r(macro_f1(gold, pred, len(names))), "labels": per_label,
                "confusion_matrix": {"labels": names,
                                     "rows_gold_cols_predicted": confusion(gold, pred,
                                                                           len(names))}}
    f1s = []
    for j, lab in enumerate(task.labels):
        g = gold[:, j]
        p = (scores[:, j] >= lab.threshold).astype(int)
        tp, fp, fn, tn = (int(np.sum((g == a) & (p == b))) for a, b in
                          ((1, 1), (0, 1), (1, 0), (0, 0)))
        f1s.append(_binary_f1(g, p))
        per_label[lab.name] = {"n": int(g.sum()), "threshold": lab.threshold,
                               "accuracy": _r(np.mean(g == p)), "f1": _r(_binary_f1(g, p)),
                               "roc_auc": _r(roc_auc(g, scores[:, j])),
                               "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}}
    return {"task": task.name, "n": len(gold), "macro_f1": _r(np.mean(f1s)),
            "labels": per_label}


def _binary_f1(g: np.ndarray, p: np.ndarray) -> float:
    from wacht.models.thresholds import binary_counts, f1

    tp, fp, fn, _ = binary_counts(g, p)
    return f1(tp, fp, fn)


def evaluate_file(model_dir: str | Path, path: str | Path, task_name: str | None,
                  text_column: str, label_columns: tuple[str, ...], threads: int = 2) -> dict:
    """Evaluate one task of a model directory on a user's labelled file."""
    from wacht.models import userdata
    from wacht.service.runtime.engine import Engine

    engine = Engine.load(Path(model_dir), intra_op_threads=threads)
    tasks = {t.name: t for t in engine.manifest.tasks}
    if task_name is None:
        if len(tasks) != 1:
            raise userdata.UserDataError(f"--task is needed: the model has tasks {list(tasks)}")
        task_name = next(iter(tasks))
    if task_name not in tasks:
        raise userdata.UserDataError(f"--task {task_name!r}: the model has tasks {list(tasks)}")
    task = tasks[task_name]
    names = task.label_names
    lf = userdata.load(path, text_column, label_columns)
    unknown = [n for n in lf.labels if n not in names]
    if unknown:
        raise userdata.UserDataError(f"{path}: labels {unknown} are not labels of task "
                                     f"{task.name!r} ({list(names)})")
    if lf.multi_label:
        gold = np.zeros((len(lf.texts), len(names)), dtype=np.int64)
        for j, n in enumerate(lf.labels):
            gold[:, names.index(n)] = lf.gold[:, j]
    else:
        idx = np.array([names.index(n) for n in lf.labels])[lf.gold]
        gold = idx if task.activation == "softmax" else np.eye(len(names), dtype=np.int64)[idx]
    started = time.perf_counter()
    scores = np.stack([r.scores[task.name] for r in engine.predict(lf.texts)])
    metrics = file_metrics(task, scores, gold)
    return {"model": engine.manifest.name, "version": engine.manifest.version,
            "data": {"file": Path(path).name, "sha256": lf.sha256, "rows": len(lf.texts),
                     "label_counts": lf.label_counts()},
            "seconds": round(time.perf_counter() - started, 2), **metrics}


def print_file_metrics(m: dict) -> None:
    print(f"{m['model']} {m['version']} task {m['task']} on {m['data']['file']} "
          f"({m['n']} rows): macro-F1 {m['macro_f1']}"
          + (f", accuracy {m['accuracy']}" if "accuracy" in m else ""))
    print("| label | n | accuracy | F1 | ROC-AUC |")
    print("|---|---|---|---|---|")
    for name, lab in m["labels"].items():
        print(f"| {name} | {lab['n']} | {lab['accuracy']} | {lab['f1']} | {lab['roc_auc']} |")
    cm = m.get("confusion_matrix")
    if cm:
        print("confusion matrix (rows gold, columns predicted):")
        print("| gold \\ predicted | " + " | ".join(cm["labels"]) + " |")
        for name, row in zip(cm["labels"], cm["rows_gold_cols_predicted"], strict=True):
            print(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
