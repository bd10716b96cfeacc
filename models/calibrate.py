"""`wacht models calibrate MODEL_DIR --data FILE [--task T] [--target f1|precision=0.9|recall=0.8]`

Per label of one task: the threshold on the user's labelled sample that maximises F1, or the
lowest threshold reaching the named precision (highest reaching the named recall). Prints a
compact precision/recall table, plots the curves to a PNG (matplotlib, if installed), writes
the thresholds to manifest.yaml and CARD.md and refreshes SHA256SUMS. Policies written
relative to `manifest` follow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from wacht.models.thresholds import binary_counts, f1

GRID = np.round(np.arange(0.02, 0.981, 0.02), 2)


def curve(gold: np.ndarray, score: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(threshold, precision, recall, F1) over GRID."""
    out = []
    for t in GRID:
        tp, fp, fn, _ = binary_counts(gold, (score >= t).astype(int))
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out.append((float(t), p, r, f1(tp, fp, fn)))
    return out


def choose(points: list[tuple[float, float, float, float]], target: str) -> float:
    kind, _, value = target.partition("=")
    if kind == "f1":
        return max(points, key=lambda x: (x[3], -x[0]))[0]
    goal = float(value)
    if kind == "precision":
        ok = [x for x in points if x[1] >= goal and x[2] > 0]
        if not ok:
            raise ValueError(f"no threshold reaches precision {goal} on this sample")
        return min(ok, key=lambda x: x[0])[0]
    if kind == "recall":
        ok = [x for x in points if x[2] >= goal]
        if not ok:
            raise ValueError(f"no threshold reaches recall {goal} on this sample")
        return max(ok, key=lambda x: x[0])[0]
    raise ValueError(f"--target {target!r}: use f1, precision=P or recall=R")


def calibrate(model_dir: Path, data: Path, task_name: str, target: str = "f1",
              text_column: str = "text", label_columns: tuple[str, ...] = ("label",),
              png: Path | None = None) -> dict[str, dict]:
    from wacht.models import userdata
    from wacht.service.runtime.engine import Engine
    from wacht.service.runtime.model_dir import write_sha256sums

    engine = Engine.load(model_dir)
    task = engine.manifest.task(task_name)
    names = list(task.label_names)
    lf = userdata.load(data, text_column, label_columns)
    unknown = [n for n in lf.labels if n not in names]
    if unknown:
        raise userdata.UserDataError(f"{data}: labels {unknown} are not labels of {task_name}")
    scores = np.stack([r.scores[task_name] for r in engine.predict(lf.texts)])
    result: dict[str, dict] = {}
    for j, name in enumerate(lf.labels):
        gold = lf.gold[:, j] if lf.multi_label else (lf.gold == j).astype(int)
        points = curve(gold, scores[:, names.index(name)])
        t = choose(points, target)
        row = next(x for x in points if x[0] == t)
        result[name] = {"threshold": t, "precision": round(row[1], 4),
                        "recall": round(row[2], 4), "f1": round(row[3], 4), "curve": points}
    manifest_file = model_dir / "manifest.yaml"
    manifest = yaml.safe_load(manifest_file.read_text(encoding="utf-8"))
    for entry in manifest["tasks"]:
        if entry["name"] == task_name:
            for label in entry["labels"]:
                if label["name"] in result:
                    label["threshold"] = result[label["name"]]["threshold"]
    manifest.setdefault("provenance", {})["calibration"] = {
        "task": task_name, "target": target, "file": data.name, "sha256": lf.sha256,
        "rows": len(lf.texts)}
    from wacht.models.package import write_manifest

    write_manifest(manifest_file, manifest)
    card = model_dir / "CARD.md"
    lines = [f"\n## Thresholds calibrated on `{data.name}` (sha256 `{lf.sha256}`, "
             f"{len(lf.texts)} rows), target {target}\n", "| label | threshold | precision | "
             "recall | F1 |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['threshold']} | {r['precision']} | {r['recall']} | {r['f1']} |"
              for n, r in result.items()]
    with card.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    write_sha256sums(model_dir)
    if png is not None:
        plot(result, png, f"{task_name} on {data.name}")
    return result


def plot(result: dict[str, dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in result.items():
        pts = r["curve"]
        ax.plot([x[2] for x in pts], [x[1] for x in pts], label=f"{name} (t={r['threshold']})")
        ax.scatter([r["recall"]], [r["precision"]])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)


def print_table(result: dict[str, dict]) -> None:
    for name, r in result.items():
        print(f"{name}: threshold {r['threshold']} precision {r['precision']} "
              f"recall {r['recall']} F1 {r['f1']}")
        print("  t     P     R     F1")
        for t, p, rec, f in r["curve"][::5]:
            print(f"  {t:.2f}  {p:.3f} {rec:.3f} {f:.3f}")
