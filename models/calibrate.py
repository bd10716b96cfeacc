"""`wacht models calibrate MODEL_DIR --data FILE [--task T] [--target f1|precision=0.9|recall=0.8]`

Per label of one task: the threshold on the user's labelled sample that maximises F1, or the
lowest threshold reaching the named precision (highest reaching the named recall). Prints a
compact precision/recall table, plots the curves to a PNG (matplotlib, if installed), writes
the thresholds to manifest.yaml and CARD.md and refreshes SHA256SUMS. Policies written
relative to `manifest` follow.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from wacht.models.thresholds import binary_counts, f1
from wacht.models.userdata import UserDataError

GRID = np.round(np.arange(0.02, 0.981, 0.02), 2)


class CalibrationError(UserDataError):
    """The target cannot be met (or named) on this sample; nothing was written."""


def curve(gold: np.ndarray, score: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(threshold, precision, recall, F1) over GRID."""
    out = []
    for t in GRID:
        tp, fp, fn, _ = binary_counts(gold, (score >= t).astype(int))
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out.append((float(t), p, r, f1(tp, fp, fn)))
    return out


def parse_target(target: str) -> tuple[str, float]:
    """('f1', 0) | ('precision', P) | ('recall', R) with P, R in (0, 1]."""
    kind, _, value = target.partition("=")
    if kind == "f1" and not value:
        return kind, 0.0
    try:
        goal = float(value)
    except ValueError:
        goal = -1.0
    if kind not in ("precision", "recall") or not 0 < goal <= 1:
        raise CalibrationError(f"--target {target!r}: use f1, precision=P or recall=R with "
                               "P, R in (0, 1]")
    return kind, goal


def choose(points: list[tuple[float, float, float, float]], target: str) -> float:
    kind, goal = parse_target(target)
    if kind == "f1":
        return max(points, key=lambda x: (x[3], -x[0]))[0]
    if kind == "precision":
        ok = [x for x in points if x[1] >= goal and x[2] > 0]
        if not ok:
            best = max((x[1] for x in points if x[2] > 0), default=0.0)
            raise CalibrationError(f"no threshold reaches precision {goal} on this sample "
                                   f"(best {best:.3f}); nothing was written")
        return min(ok, key=lambda x: x[0])[0]
    ok = [x for x in points if x[2] >= goal]
    if not ok:
        raise CalibrationError(f"no threshold reaches recall {goal} on this sample; "
                               "nothing was written")
    return max(ok, key=lambda x: x[0])[0]


def calibrate(model_dir: Path, data: Path, task_name: str, target: str = "f1",
              text_column: str = "text", label_columns: tuple[str, ...] = ("label",),
              png: Path | None = None) -> dict[str, dict]:
    from wacht.models import userdata
    from wacht.service.runtime.engine import Engine
    from wacht.service.runtime.model_dir import write_sha256sums

    engine = Engine.load(model_dir)
    tasks = [t.name for t in engine.manifest.tasks]
    if task_name not in tasks:
        raise CalibrationError(f"--task {task_name!r}: {model_dir} has tasks {tasks}")
    parse_target(target)  # a bad --target fails before any scoring
    task = engine.manifest.task(task_name)
    names = list(task.label_names)
    # a sigmoid head's labels as 0/1 columns named after them (one column is enough)
    binary = task.activation == "sigmoid" and all(c in names for c in label_columns)
    lf = userdata.load(data, text_column, label_columns, binary_columns=binary)
    unknown = [n for n in lf.labels if n not in names]
    if unknown:
        raise userdata.UserDataError(f"{data}: labels {unknown} are not labels of {task_name}")
    scores = np.stack([r.scores[task_name] for r in engine.predict(lf.texts)])
    result: dict[str, dict] = {}
    for j, name in enumerate(lf.labels):
        gold = lf.gold[:, j] if lf.multi_label else (lf.gold == j).astype(int)
        points = curve(gold, scores[:, names.index(name)])
        try:
            t = choose(points, target)
        except CalibrationError as exc:
            raise CalibrationError(f"label {name!r}: {exc}") from None
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
    lines = [f"\n{_heading(task_name)}`{data.name}` (sha256 `{lf.sha256}`, "
             f"{len(lf.texts)} rows), target {target}\n", "| label | threshold | precision | "
             "recall | F1 |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['threshold']} | {r['precision']} | {r['recall']} | {r['f1']} |"
              for n, r in result.items()]
    old = card.read_text(encoding="utf-8") if card.is_file() else ""
    card.write_text(replace_section(old, _heading(task_name), "\n".join(lines) + "\n"),
                    encoding="utf-8")
    write_sha256sums(model_dir)
    if png is not None:
        plot(result, png, f"{task_name} on {data.name}")
    return result


def _heading(task_name: str) -> str:
    return f"## Thresholds of `{task_name}` calibrated on "


def replace_section(card: str, heading: str, section: str) -> str:
    """`card` with the section starting at `heading` (up to the next `## ` heading) replaced
    by `section`; appended when there is none. A re-run replaces its own section."""
    pattern = re.compile(r"\n" + re.escape(heading) + r".*?(?=\n## |\Z)", re.DOTALL)
    if not pattern.search(card):
        return card + section
    out = pattern.sub(lambda _: section.rstrip("\n"), card, count=1)
    return out if out.endswith("\n") else out + "\n"


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
