"""Write a Wacht model directory: tokenizer, manifest, card, metrics, SHA256SUMS (no torch)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from wacht.service.runtime.model_dir import SUMS_FILE, write_sha256sums

DIRECTORY_FILES = ("model.onnx", "tokenizer.json", "manifest.yaml", "CARD.md", "metrics.json")


def write_tokenizer(source: Path, dest: Path) -> None:
    """Copy an HF tokenizer.json with padding and truncation removed (the runtime sets them)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source))
    tok.no_padding()
    tok.no_truncation()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest))


def manifest_dict(
    name: str, version: str, precision: str, heads: list[dict[str, Any]],
    provenance: dict[str, Any], max_length: int = 256, window_stride: int = 192,
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids"),
    languages: tuple[str, ...] = ("en",),
) -> dict[str, Any]:
    """`heads`: dicts with name, output, activation, labels, categories, thresholds."""
    tasks = []
    for h in heads:
        labels = []
        for label in h["labels"]:
            entry: dict[str, Any] = {"name": label}
            category = (h.get("categories") or {}).get(label)
            if category:
                entry["category"] = category
            if h["activation"] == "sigmoid":
                entry["threshold"] = float((h.get("thresholds") or {}).get(label, 0.5))
            labels.append(entry)
        tasks.append({"name": h["name"], "output": h["output"], "activation": h["activation"],
                      "labels": labels})
    provenance = {"created": dt.date.today().isoformat(), **provenance}
    return {"name": name, "version": version, "precision": precision, "max_length": max_length,
            "window_stride": window_stride, "inputs": list(inputs), "languages": list(languages),
            "tasks": tasks, "provenance": provenance}


class _FlowLabels(yaml.SafeDumper):
    pass


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = "name" in data and len(data) <= 3 and all(
        isinstance(v, str | int | float) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_FlowLabels.add_representer(dict, _represent_dict)


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    text = yaml.dump(manifest, Dumper=_FlowLabels, sort_keys=False, allow_unicode=True,
                     width=100)
    path.write_text(text, encoding="utf-8")


def file_sums_section(sums: dict[str, str]) -> str:
    lines = ["| file | sha256 |", "|---|---|"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in sums.items()]
    return "\n".join(lines)


def finish_directory(out: Path, card_text_fn, metrics: dict[str, Any]) -> dict[str, str]:  # noqa: ANN001
    """Write metrics.json, then CARD.md (which quotes every other file's sha256), then sums.
    `card_text_fn(sums_without_card) -> str`."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    card = out / "CARD.md"
    if card.exists():
        card.unlink()
    stale = out / SUMS_FILE
    if stale.exists():
        stale.unlink()
    sums = write_sha256sums(out)
    card.write_text(card_text_fn(sums), encoding="utf-8")
    return write_sha256sums(out)


def clean_directory(out: Path) -> None:
    """Empty `out` of the files a model directory holds (other files are left alone)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*DIRECTORY_FILES, SUMS_FILE):
        p = out / name
        if p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
