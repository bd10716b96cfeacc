"""`wacht models finetune MODEL_DIR --data FILE --task NAME --out DIR` (head-only, new task).

Encoder frozen: the served graph computes each text's sentence embedding, a logistic
regression (softmax single-label, one sigmoid per label multi-label) is fitted on a
deterministic hash split (90% train / 10% validation, or --val FILE), and the head is grafted
into the same model.onnx as a new output. The old heads are untouched. `--baseline` also
fits TF-IDF + logistic regression on the same split. Needs the `train` extra (onnx,
scikit-learn). `--mode full` (encoder too) is models/finetune_full.py, which reuses the split,
baseline, manifest, provenance and card helpers here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from wacht.models import userdata


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def val_mask(texts: list[str], percent: int = 10, gold: np.ndarray | None = None) -> np.ndarray:
    """Deterministic validation rows. With `gold` (class index per row) stratified: in each
    class the `percent`% of rows (at least one) with the lowest text hash."""
    if gold is None or gold.ndim != 1:
        return np.array([_hash(t) % 100 < percent for t in texts])
    mask = np.zeros(len(texts), dtype=bool)
    for c in np.unique(gold):
        rows = np.flatnonzero(gold == c)
        k = max(1, round(len(rows) * percent / 100))
        mask[sorted(rows, key=lambda i: _hash(texts[i]))[:k]] = True
    return mask


def _fit(x: np.ndarray, y: np.ndarray, multi: bool, c: float):  # noqa: ANN202
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    return (OneVsRestClassifier(clf) if multi else clf).fit(x, y)


def _weights(model, multi: bool, classes: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    if multi:
        w = np.stack([e.coef_[0] for e in model.estimators_], 1)
        return w, np.array([e.intercept_[0] for e in model.estimators_])
    if classes == 2:  # sklearn keeps one row for two classes: logits (-z/2, z/2)
        z, b = model.coef_[0], model.intercept_[0]
        return np.stack([-z / 2, z / 2], 1), np.array([-b / 2, b / 2])
    return model.coef_.T, model.intercept_


def _macro_f1(model, x: np.ndarray, y: np.ndarray, multi: bool, classes: int) -> float:  # noqa: ANN001
    from sklearn.metrics import f1_score

    pred = model.predict(x)
    return float(f1_score(y, pred, average="macro",
                          labels=None if multi else list(range(classes)), zero_division=0))


def user_data(lf: userdata.LabelledFile, data: Path, data_license: str, text_column: str,
              label_columns: tuple[str, ...]) -> dict:
    """How the CARD and the manifest describe the user's file."""
    return {"file": data.name, "sha256": lf.sha256, "rows": len(lf.texts),
            "label_counts": lf.label_counts(), "license": data_license,
            "text_column": text_column, "label_columns": list(label_columns)}


def provenance(manifest: dict, base: str, user: dict, rebuild: str, mode: str = "head-only",
               **what: str) -> dict:
    """The fine-tuned directory's provenance: the base model's, plus how it was derived
    (`mode`: head-only | full)."""
    finetune = {"mode": mode, **what, "user_data": user, "rebuild_command": rebuild}
    return {**manifest.get("provenance", {}), "finetuned_from": base, "finetune": finetune}


def split(lf: userdata.LabelledFile, val: Path | None, text_column: str,
          label_columns: tuple[str, ...]) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(train texts, train gold, validation texts, validation gold): `val` if given, else the
    stratified `val_mask` hash split of the user's file."""
    if val is not None:
        vf = userdata.load(val, text_column, label_columns, labels=lf.labels)
        return lf.texts, lf.gold, vf.texts, vf.gold
    mask = val_mask(lf.texts, gold=lf.gold)
    tr_x = [t for t, m in zip(lf.texts, mask, strict=True) if not m]
    va_x = [t for t, m in zip(lf.texts, mask, strict=True) if m]
    return tr_x, lf.gold[~mask], va_x, lf.gold[mask]


def split_description(val: Path | None) -> str:
    return str(val.name) if val else "hash split 10%, stratified"


def baseline_macro_f1(tr_x: list[str], tr_y: np.ndarray, va_x: list[str], va_y: np.ndarray,
                      multi: bool, classes: int) -> float:
    """TF-IDF (word 1-2 grams) + logistic regression on the same split, best C on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_tr, x_va = vec.fit_transform(tr_x), vec.transform(va_x)
    return round(max(_macro_f1(_fit(x_tr, tr_y, multi, cc), x_va, va_y, multi, classes)
                     for cc in (0.3, 1.0, 3.0, 10.0)), 4)


def append_task(manifest: dict, task: str, output: str, lf: userdata.LabelledFile) -> str:
    """Append the new task to a manifest dict (softmax single-label, sigmoid multi-label with
    threshold 0.5); returns the activation."""
    activation = "sigmoid" if lf.multi_label else "softmax"
    labels = [{"name": n, **({"threshold": 0.5} if lf.multi_label else {})}
              for n in lf.labels]
    manifest["tasks"].append({"name": task, "output": output, "activation": activation,
                              "labels": labels})
    return activation


def check_new_task(task: str, served_tasks: list[str], model_dir: Path) -> None:
    if task in served_tasks:
        raise userdata.UserDataError(f"--task {task!r} is already a task of {model_dir}; "
                                     "choose a new name")


def user_data_section(user: dict) -> str:
    counts = ", ".join(f"{k}: {v}" for k, v in user["label_counts"].items())
    return (f"## Your data\n\n- file: `{user['file']}`, sha256 `{user['sha256']}`, "
            f"{user['rows']} rows\n- label counts: {counts}\n- licence (as stated by the "
            f"user): {user['license']}\n")


def card_tail(model_dir: Path, sums: dict[str, str]) -> str:
    """The Files section and the base model's card, which every derived card ends with."""
    base = (model_dir / "CARD.md").read_text(encoding="utf-8") \
        if (model_dir / "CARD.md").is_file() else ""
    return ("\n## Files\n\n" + "\n".join(f"- `{k}`: `{v}`" for k, v in sums.items())
            + "\n\n## Base model card\n\n" + base)


def auto_features(model) -> str:  # noqa: ANN001
    """`layers` where the graph names its encoder layers, else `pooler+mean` where it has a
    BERT-style last hidden state, else `pooler`."""
    from wacht.models import graft

    for kind, probe in (("layers", graft.layer_tensors), ("pooler+mean", graft.hidden_tensor)):
        try:
            probe(model)
            return kind
        except ValueError:
            pass
    return "pooler"


def finetune(model_dir: Path, data: Path, task: str, out: Path, text_column: str = "text",
             label_columns: tuple[str, ...] = ("label",), val: Path | None = None,
             data_license: str = "not stated", baseline: bool = False,
             threads: int = 2, features: str = "auto") -> dict:
    import onnx

    from wacht.models import graft
    from wacht.models.package import finish_directory, write_manifest
    from wacht.service.runtime.model_dir import load_model_dir

    started = time.perf_counter()
    served = load_model_dir(model_dir)
    check_new_task(task, [t.name for t in served.manifest.tasks], model_dir)
    lf = userdata.load(data, text_column, label_columns)
    tr_x, tr_y, va_texts, va_y = split(lf, val, text_column, label_columns)
    classes = len(lf.labels)
    model = onnx.load(str(served.model_file))
    if features == "auto":  # the richest features this graph has
        features = auto_features(model)
    feat = graft.add_features(model, features)
    e_tr = graft.tensors(model_dir, tr_x, [feat], threads, model=model)[feat]
    e_va = graft.tensors(model_dir, va_texts, [feat], threads, model=model)[feat]
    embed_s = time.perf_counter() - started
    # standardised features; the scaling is folded into the grafted weights below
    mu, sd = e_tr.mean(0), e_tr.std(0) + 1e-6
    z_tr, z_va = (e_tr - mu) / sd, (e_va - mu) / sd
    best = None
    for c in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        m = _fit(z_tr, tr_y, lf.multi_label, c)
        score = _macro_f1(m, z_va, va_y, lf.multi_label, classes)
        if best is None or score > best[0] + 1e-9:
            best = (score, c, m)
    assert best is not None
    val_f1, c, clf = best
    w, b = _weights(clf, lf.multi_label, classes)
    w, b = w / sd[:, None], b - (mu / sd) @ w
    output = f"{task}_logits"
    out.mkdir(parents=True, exist_ok=True)
    model = graft.add_head(model, output, w, b, features)
    onnx.save(model, str(out / "model.onnx"))
    shutil.copyfile(served.tokenizer_file, out / "tokenizer.json")
    manifest = yaml.safe_load((model_dir / "manifest.yaml").read_text(encoding="utf-8"))
    activation = append_task(manifest, task, output, lf)
    manifest["name"] = out.name
    user = user_data(lf, data, data_license, text_column, label_columns)
    manifest["provenance"] = provenance(
        manifest, str(served.manifest.name), user,
        f"wacht models finetune {model_dir} --data {data.name} --task {task} --out {out.name}",
        task=task)
    write_manifest(out / "manifest.yaml", manifest)
    metrics = {"model": out.name, "task": task, "mode": "head-only",
               "split": {"train": len(tr_x), "validation": len(va_texts),
                         "validation_from": split_description(val)},
               "features": features,
               "validation_macro_f1": round(val_f1, 4), "C": c,
               "seconds": {"embeddings": round(embed_s, 1)}}
    if baseline:
        metrics["baseline_tfidf_logreg_validation_macro_f1"] = baseline_macro_f1(
            tr_x, tr_y, va_texts, va_y, lf.multi_label, classes)
    metrics["seconds"]["total"] = round(time.perf_counter() - started, 1)

    def card(sums: dict[str, str]) -> str:
        return (f"# {out.name}\n\nHead-only fine-tune of `{served.manifest.name}`: new task "
                f"`{task}` ({activation}; labels {list(lf.labels)}) grafted next to the "
                f"existing heads (encoder and old heads unchanged).\n\n"
                + user_data_section(user) + "\n## Metrics (held-out validation split)\n\n"
                f"```json\n{json.dumps(metrics, indent=2)}\n```\n" + card_tail(model_dir, sums))

    finish_directory(out, card, metrics)
    return metrics


def main(args) -> int:  # noqa: ANN001
    try:
        metrics = finetune(Path(args.model_dir), Path(args.data), args.task, Path(args.out),
                           args.text_column, tuple(args.label_column or ["label"]),
                           Path(args.val) if args.val else None, args.data_license,
                           args.baseline, args.threads, args.features)
    except userdata.UserDataError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(metrics, indent=2))
    return 0
