"""Metrics without scikit-learn (the serving env has only numpy) and threshold selection."""

from __future__ import annotations

import numpy as np


def binary_counts(gold: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum((gold == 1) & (pred == 1)))
    fp = int(np.sum((gold == 0) & (pred == 1)))
    fn = int(np.sum((gold == 1) & (pred == 0)))
    tn = int(np.sum((gold == 0) & (pred == 0)))
    return tp, fp, fn, tn


def f1(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def macro_f1(gold: np.ndarray, pred: np.ndarray, classes: int | None = None) -> float:
    classes = classes or int(max(gold.max(initial=0), pred.max(initial=0))) + 1
    scores = []
    for c in range(classes):
        tp = int(np.sum((gold == c) & (pred == c)))
        fp = int(np.sum((gold != c) & (pred == c)))
        fn = int(np.sum((gold == c) & (pred != c)))
        if tp + fp + fn:
            scores.append(f1(tp, fp, fn))
    return float(np.mean(scores)) if scores else 0.0


def roc_auc(gold: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None with one class only."""
    gold = np.asarray(gold)
    pos = int(np.sum(gold == 1))
    neg = int(np.sum(gold == 0))
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = np.asarray(score)[order]
    ranks = np.empty(len(score), dtype=np.float64)
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[gold == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def best_threshold(sets: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray | None = None
                   ) -> tuple[float, float]:
    """Threshold maximising binary macro-F1 averaged over the given (gold, score) sets.
    Entries with gold -1 are ignored. Returns (threshold, mean macro-F1 there)."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2) if grid is None else grid
    cleaned = [(g[g >= 0], s[g >= 0]) for g, s in sets]
    cleaned = [(g, s) for g, s in cleaned if len(g) and g.min() != g.max()]
    if not cleaned:
        return 0.5, 0.0
    best = (0.5, -1.0)
    for t in grid:
        score = float(np.mean([macro_f1(g, (s >= t).astype(int), 2) for g, s in cleaned]))
        if score > best[1] + 1e-12:
            best = (float(t), score)
    return best
