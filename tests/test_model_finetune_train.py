"""Head-only fine-tune of a new task (models/finetune.py + models/graft.py); train env."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train

MODEL = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"
TOPICS = {
    "sport": ["the match", "our striker", "the goalkeeper", "the final whistle", "the league"],
    "food": ["the soup", "this recipe", "the pasta sauce", "the bakery", "grilled onions"],
    "money": ["my bank", "the interest rate", "the stock price", "my mortgage", "the invoice"],
}
VERBS = ["was great today", "really annoyed me", "is all anyone talks about", "changed again",
         "surprised everyone", "made my week"]


def rows(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        out.append((f"{rng.choice(TOPICS[label])} {rng.choice(VERBS)} #{rng.randint(0, 999)}",
                    label))
    return out


def write(path: Path, data: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in data),
                    encoding="utf-8")
    return path


def test_head_only_new_task_serves_and_keeps_old_heads(tmp_path: Path) -> None:
    from wacht.models.evaluate import evaluate_file
    from wacht.models.finetune import finetune
    from wacht.service.runtime.engine import Engine

    out = tmp_path / "topic-model"
    metrics = finetune(MODEL, write(tmp_path / "train.csv", rows(1, 240)), "topic", out,
                       data_license="CC0 (synthetic)", baseline=True)
    assert metrics["validation_macro_f1"] > 0.6
    assert metrics["features"] == "layers"  # the head reads [pooler, every layer's mean]
    held = evaluate_file(out, write(tmp_path / "test.csv", rows(2, 60)), "topic", "text",
                         ("label",))
    assert held["macro_f1"] > 0.6  # chance is ~0.33
    new, old = Engine.load(out), Engine.load(MODEL)
    assert [t.name for t in new.manifest.tasks] == ["sentiment", "toxicity", "topic"]
    texts = ["you are an idiot", "what a lovely morning", "the invoice is late again"]
    for a, b in zip(new.predict(texts), old.predict(texts), strict=True):
        for task in ("sentiment", "toxicity"):
            np.testing.assert_allclose(a.scores[task], b.scores[task], atol=1e-5)
    card = (out / "CARD.md").read_text(encoding="utf-8")
    assert "train.csv" in card and "240 rows" in card and "CC0 (synthetic)" in card


def test_layer_features_are_the_pooler_and_each_layers_masked_mean() -> None:
    """`layers` finds the six encoder layers of the int8 graph, and its feature tensor is
    [pooler, mean of layer 0 .. 5] with padding left out of each mean."""
    import onnx
    import onnxruntime as ort

    from wacht.models import graft
    from wacht.models.export import padded
    from wacht.service.runtime.tokenize import WindowTokenizer

    model = onnx.load(str(MODEL / "model.onnx"))
    layers = graft.layer_tensors(model)
    assert len(layers) == 6 and layers[-1] == graft.hidden_tensor(model)
    feat = graft.add_features(model, "layers")
    names = [feat, graft.embedding_tensor(model), *layers]
    sess = ort.InferenceSession(graft.with_outputs(model, names).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    tok = WindowTokenizer.from_file(MODEL / "tokenizer.json", 256, 192)
    feeds = padded([e.windows[0] for e in tok.encode(["short", "a much longer text here"],
                                                     "head", 1)])
    out = dict(zip(names, sess.run(names, feeds), strict=True))
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    means = [(out[t] * mask).sum(1) / mask.sum(1) for t in layers]
    expected = np.concatenate([out[names[1]], *means], axis=1)
    assert out[feat].shape == (2, 384 * 7)
    np.testing.assert_allclose(out[feat], expected, atol=1e-5)
