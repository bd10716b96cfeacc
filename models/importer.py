"""Turn a local HF sequence-classification checkpoint into a Wacht model directory, offline.

    wacht models import HF_DIR OUT_DIR [--name NAME] [--task NAME] [--int8]
                        [--category LABEL=CANONICAL ...] [--max-length N]

ONNX via optimum's exporter (output `logits`), labels from `id2label`, activation from
`problem_type` (multi_label_classification -> sigmoid, else softmax), a card stub, SHA256SUMS.
Label names that match a canonical category get it by default; --category overrides
(`LABEL=` removes it). Needs the `train` extra.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CANONICAL_ALIASES = {
    "toxic": "toxicity", "toxicity": "toxicity", "offensive": "toxicity",
    "severe_toxic": "severe_toxicity", "severe_toxicity": "severe_toxicity",
    "insult": "insult", "obscene": "profanity", "profanity": "profanity",
    "threat": "threat", "hate": "hate", "identity_hate": "hate", "identity_attack": "hate",
    "sexual_explicit": "sexual",
}
SENTIMENT_NAMES = {"negative", "neutral", "positive"}
PARITY_TEXTS = ["Hello there, how are you?", "You are an idiot and everybody hates you.",
                "the movie was surprisingly good", "I will find you.", ""]


def canonical_category(label: str) -> str | None:
    key = re.sub(r"[^a-z]+", "_", label.lower()).strip("_")
    return CANONICAL_ALIASES.get(key)


def parse_category_overrides(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        label, sep, category = item.partition("=")
        if not sep or not label:
            raise ValueError(f"--category {item!r}: expected LABEL=CANONICAL")
        out[label] = category or None
    return out


def default_task_name(labels: list[str], categories: dict[str, str | None]) -> str:
    if any(categories.values()):
        return "toxicity"
    if {label.lower() for label in labels} <= SENTIMENT_NAMES:
        return "sentiment"
    return "classification"


def _tokenizer_json(hf_dir: Path, dest: Path) -> None:
    from wacht.models.package import write_tokenizer

    source = hf_dir / "tokenizer.json"
    if not source.is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True, use_fast=True)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save_pretrained(tmp)
            write_tokenizer(Path(tmp) / "tokenizer.json", dest)
        return
    write_tokenizer(source, dest)


def _max_length(config: Any, hf_dir: Path, requested: int | None) -> int:
    if requested:
        return requested
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # positions start after the padding index
    tok_config = hf_dir / "tokenizer_config.json"
    if tok_config.is_file():
        declared = json.loads(tok_config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < limit:
            limit = declared
    return min(limit, 512)


def export_with_optimum(hf_dir: Path, out_file: Path) -> Path:
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory() as tmp:
        main_export(str(hf_dir), tmp, task="text-classification", opset=17,
                    local_files_only=True, do_validation=False, device="cpu")
        out_file.parent.mkdir(parents=True, exist_ok=True)
        Path(tmp, "model.onnx").replace(out_file)
    return out_file


def torch_parity(hf_dir: Path, onnx_file: Path, tokenizer_file: Path) -> float:
    """Max |Δlogit| between the HF torch model and the exported graph on a few texts."""
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir),
                                                               local_files_only=True).eval()
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.enable_truncation(128)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    worst = 0.0
    for text in PARITY_TEXTS:
        enc = tok.encode(text)
        feeds = {"input_ids": np.array([enc.ids], dtype=np.int64),
                 "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                 "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}
        feeds = {k: v for k, v in feeds.items() if k in names}
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        worst = max(worst, float(np.max(np.abs(ref - sess.run(["logits"], feeds)[0]))))
    return worst


def import_hf(hf_dir: str | Path, out: str | Path, *, name: str | None = None,
              task: str | None = None, categories: dict[str, str | None] | None = None,
              max_length: int | None = None, int8: bool = False,
              languages: tuple[str, ...] = ()) -> Path:
    import onnx
    from transformers import AutoConfig

    from wacht.models.package import (
        clean_directory,
        finish_directory,
        manifest_dict,
        write_manifest,
    )

    hf_dir, out = Path(hf_dir), Path(out)
    config = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    activation = "sigmoid" if config.problem_type == "multi_label_classification" else "softmax"
    overrides = categories or {}
    unknown = set(overrides) - set(labels)
    if unknown:
        raise ValueError(f"--category names unknown labels {sorted(unknown)}; labels: {labels}")
    cats = {label: overrides.get(label, canonical_category(label)) for label in labels}
    thresholds_file = hf_dir / "wacht_thresholds.json"
    thresholds = (json.loads(thresholds_file.read_text(encoding="utf-8"))
                  if thresholds_file.is_file() else {})
    task_name = task or default_task_name(labels, cats)
    name = name or out.name

    clean_directory(out)
    _tokenizer_json(hf_dir, out / "tokenizer.json")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_with_optimum(hf_dir, Path(tmp) / "fp32.onnx")
        diff = torch_parity(hf_dir, fp32, out / "tokenizer.json")
        final = fp32
        if int8:
            from wacht.models.export import QuantScheme, quantize

            final = quantize(fp32, Path(tmp) / "int8.onnx",
                             QuantScheme("qint8", False, "QInt8", False, False), Path(tmp))
        final.replace(out / "model.onnx")
    inputs = tuple(i.name for i in onnx.load(str(out / "model.onnx"), load_external_data=False)
                   .graph.input)
    length = _max_length(config, hf_dir, max_length)
    head = {"name": task_name, "output": "logits", "activation": activation, "labels": labels,
            "categories": {k: v for k, v in cats.items() if v},
            "thresholds": {label: float(thresholds.get(label, 0.5)) for label in labels}}
    source = {"imported_from": str(hf_dir.resolve()), "model_type": config.model_type,
              "architectures": list(config.architectures or []),
              "license": "see the source checkpoint", "rebuild_command":
              f"wacht models import {hf_dir} {out}" + (" --int8" if int8 else "")}
    manifest = manifest_dict(name, "0.1.0", "int8" if int8 else "fp32", [head], source,
                             length, max(1, length * 3 // 4), inputs, languages=languages)
    write_manifest(out / "manifest.yaml", manifest)
    metrics = {"model": name, "precision": manifest["precision"], "datasets": {},
               "parity": {"fp32_vs_torch_max_abs": float(f"{diff:.3g}"),
                          "texts": len(PARITY_TEXTS)},
               "note": "not evaluated yet: run `wacht models eval` with your data"}

    def card(sums: dict[str, str]) -> str:
        from wacht.models.package import file_sums_section

        label_lines = "\n".join(
            f"- {label}: category {cats[label] or '–'}, threshold "
            f"{head['thresholds'][label]:.2f}" for label in labels)
        return f"""# {name} (imported)

Imported with `wacht models import` from the local Hugging Face checkpoint
`{hf_dir}` (model type {config.model_type}, {", ".join(config.architectures or [])}).
Fill in the base model, license, training data and evaluation before serving this to users.

- task `{task_name}`, output `logits`, activation {activation}
  (problem_type {config.problem_type or "unset"})
{label_lines}
- precision {manifest["precision"]}; windows of {length} tokens
- export parity (fp32 ONNX vs torch): max |Δlogit| {diff:.2e} on {len(PARITY_TEXTS)} texts

## Files
{file_sums_section(sums)}

## Rebuild
```
{source["rebuild_command"]}
```
"""

    finish_directory(out, card, metrics)
    return out
