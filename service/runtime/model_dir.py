"""Model directories: manifest parsing and checksum verification (see docs/model-directory.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUMS_FILE = "SHA256SUMS"
ACTIVATIONS = ("softmax", "sigmoid")


class ModelDirError(Exception):
    """A model directory is missing, malformed or does not match its checksums."""


@dataclass(frozen=True)
class LabelSpec:
    name: str
    category: str | None = None
    threshold: float = 0.5


@dataclass(frozen=True)
class TaskSpec:
    name: str
    output: str
    activation: str
    labels: tuple[LabelSpec, ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    max_length: int
    window_stride: int
    inputs: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    # Languages the model was trained or validated on (ISO 639-1); language routing sends a
    # text to a model that lists its language. Empty: unknown (served only when named).
    languages: tuple[str, ...] = ()

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    @property
    def categories(self) -> tuple[str, ...]:
        """Canonical categories, in manifest order, without repeats."""
        seen: dict[str, None] = {}
        for task in self.tasks:
            for label in task.labels:
                if label.category:
                    seen.setdefault(label.category, None)
        return tuple(seen)


@dataclass(frozen=True)
class ModelDir:
    path: Path
    manifest: Manifest
    checksums: dict[str, str]

    @property
    def model_file(self) -> Path:
        return self.path / "model.onnx"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def read_text(self, name: str) -> str:
        file = self.path / name
        return file.read_text(encoding="utf-8") if file.is_file() else ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha256sums(path: str | Path) -> dict[str, str]:
    """Write SHA256SUMS for every file under `path` (itself excluded); return the sums."""
    root = Path(path)
    sums = {
        str(f.relative_to(root)): sha256_file(f)
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != SUMS_FILE and "__pycache__" not in f.parts
    }
    lines = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    (root / SUMS_FILE).write_text(lines, encoding="utf-8")
    return sums


def read_sha256sums(path: Path) -> dict[str, str]:
    sums_file = path / SUMS_FILE
    if not sums_file.is_file():
        raise ModelDirError(f"{path}: {SUMS_FILE} is missing")
    sums: dict[str, str] = {}
    for number, line in enumerate(sums_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ModelDirError(f"{sums_file}:{number}: not '<sha256>  <file>'")
        sums[name.strip()] = digest
    return sums


def verify_sha256sums(path: Path, sums: dict[str, str]) -> None:
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            raise ModelDirError(f"{path}: {name} is listed in {SUMS_FILE} but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ModelDirError(f"{path}: {name} has sha256 {actual}, {SUMS_FILE} says {expected}")
    for required in ("model.onnx", "tokenizer.json", "manifest.yaml"):
        if required not in sums:
            raise ModelDirError(f"{path}: {required} is not covered by {SUMS_FILE}")


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ModelDirError(f"{where}: missing key '{key}'")
    return data[key]


def parse_manifest(data: Any, where: str = "manifest.yaml") -> Manifest:
    if not isinstance(data, dict):
        raise ModelDirError(f"{where}: expected a mapping at the top level")
    tasks = []
    for i, raw in enumerate(_require(data, "tasks", where)):
        at = f"{where}: tasks[{i}]"
        activation = _require(raw, "activation", at)
        if activation not in ACTIVATIONS:
            raise ModelDirError(f"{at}: activation '{activation}' is not one of {ACTIVATIONS}")
        labels = tuple(
            LabelSpec(
                name=str(_require(label, "name", f"{at}.labels[{j}]")),
                category=label.get("category") or None,
                threshold=float(label.get("threshold", 0.5)),
            )
            for j, label in enumerate(_require(raw, "labels", at))
        )
        if not labels:
            raise ModelDirError(f"{at}: no labels")
        names = [label.name for label in labels]
        if len(set(names)) != len(names):
            raise ModelDirError(f"{at}: label names repeat ({names})")
        tasks.append(
            TaskSpec(
                name=str(_require(raw, "name", at)),
                output=str(_require(raw, "output", at)),
                activation=activation,
                labels=labels,
            )
        )
    if not tasks:
        raise ModelDirError(f"{where}: no tasks")
    # Several tasks may read one output (e.g. a user's own label names over an existing
    # head); a task name answers one task only.
    task_names = [task.name for task in tasks]
    if len(set(task_names)) != len(task_names):
        raise ModelDirError(f"{where}: task names repeat ({task_names})")
    max_length = int(_require(data, "max_length", where))
    stride = int(data.get("window_stride", max(1, max_length * 3 // 4)))
    if not 0 < stride <= max_length:
        raise ModelDirError(f"{where}: window_stride {stride} must be in 1..max_length")
    languages = data.get("languages") or []
    if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
        raise ModelDirError(f"{where}: languages must be a list of language codes")
    return Manifest(
        languages=tuple(x.lower() for x in languages),
        name=str(_require(data, "name", where)),
        version=str(_require(data, "version", where)),
        max_length=max_length,
        window_stride=stride,
        inputs=tuple(data.get("inputs", ("input_ids", "attention_mask"))),
        tasks=tuple(tasks),
        precision=str(data.get("precision", "fp32")),
        provenance=dict(data.get("provenance") or {}),
    )


def load_model_dir(path: str | Path, *, verify: bool = True) -> ModelDir:
    """Read and check a model directory; raise ModelDirError with the reason if it is unusable."""
    root = Path(path)
    if not root.is_dir():
        raise ModelDirError(f"{root}: not a directory")
    manifest_file = root / "manifest.yaml"
    if not manifest_file.is_file():
        raise ModelDirError(f"{root}: manifest.yaml is missing")
    try:
        data = yaml.safe_load(manifest_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelDirError(f"{manifest_file}: invalid YAML: {exc}") from exc
    manifest = parse_manifest(data, str(manifest_file))
    sums = read_sha256sums(root) if verify or (root / SUMS_FILE).is_file() else {}
    if verify:
        verify_sha256sums(root, sums)
    return ModelDir(path=root, manifest=manifest, checksums=sums)
