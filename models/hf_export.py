"""Write one head of a multi-task checkpoint as a standard HF sequence-classification model.

    wacht models export-hf CHECKPOINT OUT_DIR --task toxicity|sentiment

The result loads with `AutoModelForSequenceClassification.from_pretrained(OUT_DIR)` and
gives exactly the logits of that head (shared encoder + pooler, the head's classifier).
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def export_hf(checkpoint: str | Path, out: str | Path, task: str) -> Path:
    from transformers import BertForSequenceClassification

    from wacht.models.multitask import base_model_dir, load_checkpoint

    model, _ = load_checkpoint(Path(checkpoint))
    spec = next((h for h in model.head_specs if h.name == task), None)
    if spec is None:
        names = [h.name for h in model.head_specs]
        raise ValueError(f"checkpoint has no task {task!r} (has {names})")
    config = model.bert.config.__class__.from_dict(model.bert.config.to_dict())
    config.architectures = ["BertForSequenceClassification"]
    config.num_labels = len(spec.labels)
    config.id2label = dict(enumerate(spec.labels))
    config.label2id = {name: i for i, name in enumerate(spec.labels)}
    config.problem_type = ("multi_label_classification" if spec.activation == "sigmoid"
                           else "single_label_classification")
    config.classifier_dropout = model.dropout.p
    hf = BertForSequenceClassification(config)
    state = {f"bert.{k}": v for k, v in model.bert.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in model.heads[task].state_dict().items()})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"state mismatch: missing {missing}, unexpected {unexpected}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.eval().save_pretrained(str(out))
    base = base_model_dir()
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    if spec.thresholds:
        import json

        (out / "wacht_thresholds.json").write_text(json.dumps(spec.thresholds, indent=2) + "\n",
                                                   encoding="utf-8")
    return out
