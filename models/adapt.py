"""`wacht models finetune MODEL_DIR --adapt TASK --data FILE --out DIR` (head-only adaptation).

Domain adaptation of an existing linear head on the user's rows, encoder frozen: the head's
last layer becomes W + dW, b + db, where (dW, db) minimise the head's own loss on the user's
training split (the served logits as the offset, so the fit starts from the shipped head) plus
an L2 penalty on dW that keeps it close to the original; the penalty is chosen on the user's
validation split (log-loss). Grafted as `logits = logits_base + embedding @ dW + db` into the
same model.onnx: every other output is untouched, and the labels the user's file does not
name keep bit-identical logits (their dW columns are zero).

Reported (CARD.md and metrics.json): the adapted head on the user's held-out split before and
after, and the drift of every headline metric of the bundled evaluation sets (`wacht models
eval` on the original and the adapted directory), split into the other heads (bar: < 1 point)
and the adapted head itself.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from wacht.models import userdata

PENALTIES = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
BAR_POINTS = 0.01


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def log_loss(logits: np.ndarray, y: np.ndarray, softmax: bool) -> float:
    """Mean log-loss (softmax: y class indices; sigmoid: y 0/1, summed over labels)."""
    if softmax:
        return float(-_log_softmax(logits)[np.arange(len(y)), y].mean())
    p = np.clip(_sigmoid(logits), 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1).mean())


def fit_delta(x: np.ndarray, base: np.ndarray, y: np.ndarray, softmax: bool,
              penalty: float, anchor: np.ndarray | None = None,
              anchor_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(dW [dim, k], db [k]) minimising mean log-loss(base + x dW + db, y) + penalty |dW|^2
    + anchor_weight * mean over the `anchor` rows of |anchor dW + db|^2 (the change of the
    logits on texts of the domains the head was trained on: what keeps it from forgetting
    them). softmax: y class indices, k = classes; sigmoid: y 0/1 [rows, k]."""
    from scipy.optimize import minimize

    n, d = x.shape
    k = base.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        z = base + x @ w + b
        if softmax:
            logp = _log_softmax(z)
            value = -logp[np.arange(n), y].mean()
            g = np.exp(logp)
            g[np.arange(n), y] -= 1.0
        else:
            p = np.clip(_sigmoid(z), 1e-7, 1 - 1e-7)
            value = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1).mean()
            g = p - y
        g /= n
        value += penalty * float(np.sum(w * w))
        grad_w = x.T @ g + 2 * penalty * w
        grad_b = g.sum(0)
        if anchor is not None and anchor_weight > 0:
            change = anchor @ w + b
            value += anchor_weight * float(np.sum(change * change)) / len(anchor)
            grad_w += 2 * anchor_weight * anchor.T @ change / len(anchor)
            grad_b += 2 * anchor_weight * change.sum(0) / len(anchor)
        return float(value), np.concatenate([grad_w.ravel(), grad_b])

    res = minimize(objective, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500})
    return res.x[: d * k].reshape(d, k), res.x[d * k :]


ANCHOR_TEXTS = 2000


def anchor_texts(data: Path, task_name: str, count: int = ANCHOR_TEXTS) -> list[str]:
    """A fixed sample (by text hash) of the bundled training texts that label `task_name`:
    the domains the shipped head was trained on."""
    import hashlib

    from wacht.models.data import training_sources

    def labels_it(e) -> bool:  # noqa: ANN001
        if task_name == "sentiment":
            return e.sentiment >= 0
        return task_name == "toxicity" and any(v is not None for v in e.toxicity)

    texts = sorted({e.text for rows in training_sources(data).values() for e in rows
                    if labels_it(e)},
                   key=lambda t: hashlib.sha256(t.encode()).digest())
    return texts[:count]


def _load(task, data: Path, text_column: str, label_columns: tuple[str, ...],  # noqa: ANN001
          ) -> tuple[userdata.LabelledFile, list[int]]:
    """The user's file for an existing head, and the head's label index of each gold column
    (softmax: one label column holding the head's label names; sigmoid: 0/1 columns named
    after the head's labels, one or more)."""
    names = list(task.label_names)
    if task.activation == "softmax":
        lf = userdata.load(data, text_column, label_columns[:1], labels=tuple(names))
        return lf, list(range(len(names)))
    unknown = [c for c in label_columns if c not in names]
    if unknown:
        raise userdata.UserDataError(
            f"{data}: --label-column {unknown} are not labels of task {task.name!r} "
            f"({names}); name 0/1 columns after the labels they adapt")
    lf = userdata.load(data, text_column, label_columns, binary_columns=True)
    return lf, [names.index(c) for c in lf.labels]


Split = tuple[list[str], np.ndarray, list[str], np.ndarray, str]


def _split(lf: userdata.LabelledFile, val: Path | None, task, text_column: str,  # noqa: ANN001
           label_columns: tuple[str, ...]) -> Split:
    from wacht.models.finetune import val_mask

    if val is not None:
        vf, _ = _load(task, val, text_column, label_columns)
        return lf.texts, lf.gold, vf.texts, vf.gold, val.name
    mask = val_mask(lf.texts)
    tr = [t for t, m in zip(lf.texts, mask, strict=True) if not m]
    va = [t for t, m in zip(lf.texts, mask, strict=True) if m]
    return tr, lf.gold[~mask], va, lf.gold[mask], "hash split 10%"


def _served_metrics(model_dir: Path, task_name: str, texts: list[str], gold: np.ndarray,
                    columns: list[int], threads: int) -> dict:
    """The task's metrics on the user's held-out rows through the serving Engine (all windows,
    the manifest's thresholds), restricted to the labels the user's file has."""
    from wacht.models.evaluate import file_metrics
    from wacht.service.runtime.engine import Engine

    engine = Engine.load(model_dir, intra_op_threads=threads)
    task = engine.manifest.task(task_name)
    scores = np.stack([r.scores[task_name] for r in engine.predict(texts)])
    if task.activation == "softmax":
        return file_metrics(task, scores, gold)
    sub = dataclasses.replace(task, labels=tuple(task.labels[j] for j in columns))
    return file_metrics(sub, scores[:, columns], gold)


def drift_table(original: dict, adapted: dict, heads: dict[str, str], task: str) -> list[dict]:
    """One row per headline metric of the bundled evaluation sets: original, adapted, delta,
    and whether it belongs to the adapted head or another head."""
    from wacht.models.evaluate import headline

    a, b = headline(original), headline(adapted)
    rows = []
    for key, before in a.items():
        if key not in b or before is None or b[key] is None:
            continue
        dataset = key.split("/")[0]
        head = heads.get(dataset, "?")
        rows.append({"metric": key, "head": head, "adapted_head": head == task,
                     "original": before, "adapted": b[key],
                     "delta": round(b[key] - before, 4)})
    return rows


def drift_markdown(rows: list[dict]) -> str:
    lines = ["| metric | head | original | adapted | delta |", "|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['head']}{' (adapted)' if r['adapted_head'] else ''} | "
              f"{r['original']:.4f} | {r['adapted']:.4f} | {r['delta']:+.4f} |" for r in rows]
    return "\n".join(lines)


def adapt(model_dir: Path, data: Path, task_name: str, out: Path, text_column: str = "text",
          label_columns: tuple[str, ...] = ("label",), val: Path | None = None,
          data_license: str = "not stated", eval_data: Path | None = None,
          threads: int = 2, penalty: float | None = None, anchor_data: Path | None = None,
          anchor_weight: float = 0.1) -> dict:
    import onnx

    from wacht.models import graft
    from wacht.models.evaluate import evaluate
    from wacht.models.finetune import card_tail, provenance, user_data, user_data_section
    from wacht.models.package import finish_directory, write_manifest
    from wacht.service.runtime.model_dir import load_model_dir

    started = time.perf_counter()
    served = load_model_dir(model_dir)
    tasks = {t.name: t for t in served.manifest.tasks}
    if task_name not in tasks:
        raise userdata.UserDataError(f"--adapt {task_name!r}: {model_dir} has tasks "
                                     f"{list(tasks)}")
    task = tasks[task_name]
    if sum(t.output == task.output for t in tasks.values()) > 1:
        raise userdata.UserDataError(f"--adapt {task_name!r}: its output {task.output!r} is "
                                     "shared with another task")
    softmax = task.activation == "softmax"
    lf, columns = _load(task, data, text_column, label_columns)
    tr_x, tr_y, va_x, va_y, val_from = _split(lf, val, task, text_column, label_columns)
    model = onnx.load(str(served.model_file))
    emb = graft.embedding_tensor(model)
    t_tr = graft.tensors(model_dir, tr_x, [emb, task.output], threads)
    t_va = graft.tensors(model_dir, va_x, [emb, task.output], threads)
    anchors = (anchor_texts(anchor_data, task_name)
               if anchor_weight > 0 and anchor_data is not None and anchor_data.is_dir() else [])
    x_anchor = graft.tensors(model_dir, anchors, [emb], threads)[emb] if anchors else None
    features_s = time.perf_counter() - started
    # sigmoid: fit only the labels the file has (columns), the others keep dW = 0
    base_tr = t_tr[task.output] if softmax else t_tr[task.output][:, columns]
    base_va = t_va[task.output] if softmax else t_va[task.output][:, columns]
    tries = []
    best = None
    # a larger penalty keeps the head closer to the shipped one (less drift elsewhere)
    for p in PENALTIES if penalty is None else (penalty,):
        dw, db = fit_delta(t_tr[emb], base_tr, tr_y, softmax, p, x_anchor, anchor_weight)
        val_loss = log_loss(base_va + t_va[emb] @ dw + db, va_y, softmax)
        tries.append({"penalty": p, "validation_log_loss": round(val_loss, 4)})
        if best is None or val_loss < best[0] - 1e-9:
            best = (val_loss, p, dw, db)
    assert best is not None
    _, penalty, dw, db = best
    k = len(task.label_names)
    weight = np.zeros((dw.shape[0], k), dtype=np.float32)
    bias = np.zeros(k, dtype=np.float32)
    weight[:, columns], bias[columns] = dw, db
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(graft.add_residual(model, task.output, weight, bias), str(out / "model.onnx"))
    shutil.copyfile(served.tokenizer_file, out / "tokenizer.json")
    manifest = yaml.safe_load((model_dir / "manifest.yaml").read_text(encoding="utf-8"))
    manifest["name"] = out.name
    user = user_data(lf, data, data_license, text_column, label_columns)
    columns_args = " ".join(f"--label-column {c}" for c in label_columns)
    manifest["provenance"] = provenance(
        manifest, str(served.manifest.name), user,
        f"wacht models finetune {model_dir} --adapt {task_name} --data {data.name} "
        f"{columns_args} --out {out.name}", adapt=task_name)
    write_manifest(out / "manifest.yaml", manifest)
    (out / "SHA256SUMS").unlink(missing_ok=True)
    from wacht.service.runtime.model_dir import write_sha256sums

    write_sha256sums(out)  # the Engine verifies sums before it loads the directory
    held_before = _served_metrics(model_dir, task_name, va_x, va_y, columns, threads)
    held_after = _served_metrics(out, task_name, va_x, va_y, columns, threads)
    metrics: dict = {
        "model": out.name, "task": task_name, "mode": "head-only adaptation",
        "split": {"train": len(tr_x), "validation": len(va_x), "validation_from": val_from},
        "adapted_labels": list(lf.labels), "penalty": penalty, "penalty_tries": tries,
        "anchor": {"texts": len(anchors), "weight": anchor_weight if anchors else 0.0,
                   "from": str(anchor_data) if anchors else None},
        "user_validation": {"before": _brief(held_before), "after": _brief(held_after)},
        "seconds": {"features": round(features_s, 1)}}
    if eval_data is not None and eval_data.is_dir():
        t0 = time.perf_counter()
        original, _ = evaluate(model_dir, eval_data, threads)
        adapted, _ = evaluate(out, eval_data, threads)
        heads = {name: d["task"] for name, d in original["datasets"].items()}
        rows = drift_table(original, adapted, heads, task_name)
        others = [abs(r["delta"]) for r in rows if not r["adapted_head"]]
        metrics["drift"] = {
            "data": str(eval_data), "rows": rows,
            "other_heads_max_abs_delta": round(max(others), 4) if others else None,
            "adapted_head_max_abs_delta": round(max(
                (abs(r["delta"]) for r in rows if r["adapted_head"]), default=0.0), 4),
            "bar_other_heads_below_1_point": (max(others) < BAR_POINTS) if others else None}
        metrics["seconds"]["drift_eval"] = round(time.perf_counter() - t0, 1)
    metrics["seconds"]["total"] = round(time.perf_counter() - started, 1)

    anchor_note = (f"logit changes on {len(anchors)} of the bundled training texts penalised "
                   f"with weight {anchor_weight}" if anchors else "no anchor texts")

    def card(sums: dict[str, str]) -> str:
        before, after = metrics["user_validation"]["before"], metrics["user_validation"]["after"]
        drift = metrics.get("drift")
        text = (f"# {out.name}\n\nHead-only domain adaptation of `{served.manifest.name}`: the "
                f"`{task_name}` head's last layer re-fitted on your rows (labels "
                f"{list(lf.labels)}; encoder frozen, L2 penalty {penalty} towards the original "
                f"weights, chosen on the validation split; "
                f"{anchor_note}). Same graph, same outputs: the other "
                f"heads are unchanged, and the `{task_name}` labels your file does not name keep "
                f"bit-identical logits. Thresholds are the original ones; re-run `wacht models "
                f"calibrate` on your sample to move them.\n\n" + user_data_section(user)
                + f"\n## `{task_name}` on your held-out split ({len(va_x)} rows, "
                f"{val_from})\n\n| | macro-F1 | per label F1 | ROC-AUC |\n|---|---|---|---|\n"
                f"| original | {before['macro_f1']} | {before['f1']} | {before['roc_auc']} |\n"
                f"| adapted | {after['macro_f1']} | {after['f1']} | {after['roc_auc']} |\n")
        if drift:
            text += (f"\n## Drift on the bundled evaluation sets (`wacht models eval`)\n\n"
                     f"Other heads: largest change {drift['other_heads_max_abs_delta']} "
                     f"(bar < {BAR_POINTS}); the adapted head itself: largest change "
                     f"{drift['adapted_head_max_abs_delta']} (these sets are not your "
                     f"domain).\n\n" + drift_markdown(drift["rows"]) + "\n")
        else:
            text += "\n## Drift\n\nNot measured (no evaluation data given).\n"
        return text + card_tail(model_dir, sums)

    finish_directory(out, card, metrics)
    return metrics


def _brief(m: dict) -> dict:
    labels = m["labels"]
    return {"macro_f1": m["macro_f1"], "f1": {k: v["f1"] for k, v in labels.items()},
            "roc_auc": {k: v["roc_auc"] for k, v in labels.items()}}


def main(args) -> int:  # noqa: ANN001
    try:
        metrics = adapt(Path(args.model_dir), Path(args.data), args.adapt, Path(args.out),
                        args.text_column, tuple(args.label_column or ["label"]),
                        Path(args.val) if args.val else None, args.data_license,
                        None if args.eval_data == "none" else Path(args.eval_data),
                        args.threads, args.penalty,
                        None if args.anchor_data == "none" else Path(args.anchor_data),
                        args.anchor_weight)
    except userdata.UserDataError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k != "drift"}, indent=2))
    if "drift" in metrics:
        print(drift_markdown(metrics["drift"]["rows"]))
    return 0
