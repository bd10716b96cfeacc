"""Train-env round trip: base weights + seeded random heads -> ONNX export (parity) -> standard
HF export -> `wacht models import` -> the server's Engine, checked against torch."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("optimum")

TEXTS = ["What a lovely day!", "you are a complete idiot", "meh.",
         "the plot is thin but the actors carry the film all the way to the end"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from wacht.models.multitask import from_base, save_checkpoint

    torch.set_num_threads(1)
    model = from_base(seed=7).eval()
    model.head_specs[1].thresholds = {"offensive": 0.4, "hate": 0.3, "insult": 0.5,
                                      "profanity": 0.2}
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(model, path, {"steps": 0})
    return path


def _windows(tokenizer_file, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    return [e.ids for e in tok.encode_batch(texts)]


def test_heads_are_seeded(checkpoint):
    from wacht.models.multitask import from_base, load_checkpoint

    loaded, _ = load_checkpoint(checkpoint)
    again = from_base(seed=7)
    for name in ("sentiment", "toxicity"):
        assert torch.equal(loaded.heads[name].weight, again.heads[name].weight)
    assert not torch.equal(from_base(seed=8).heads["toxicity"].weight,
                           again.heads["toxicity"].weight)


def test_multi_head_onnx_export_matches_torch(checkpoint, tmp_path):
    from wacht.models.export import export_onnx, parity
    from wacht.models.multitask import base_model_dir, load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    onnx_file = export_onnx(model, tmp_path / "m.onnx")
    diff = parity(model, onnx_file, _windows(base_model_dir() / "tokenizer.json", TEXTS))
    assert diff <= 1e-4


@pytest.mark.parametrize("task", ["toxicity", "sentiment"])
def test_hf_export_then_import_serves_the_same_logits(checkpoint, tmp_path, task):
    from transformers import AutoModelForSequenceClassification

    from wacht.models.hf_export import export_hf
    from wacht.models.importer import import_hf
    from wacht.models.multitask import load_checkpoint
    from wacht.service.runtime.engine import Engine

    hf_dir = export_hf(checkpoint, tmp_path / "hf", task)
    hf = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    multi, _ = load_checkpoint(checkpoint)
    spec = next(h for h in multi.head_specs if h.name == task)
    assert [hf.config.id2label[i] for i in range(hf.config.num_labels)] == spec.labels
    expected_problem = ("multi_label_classification" if task == "toxicity"
                        else "single_label_classification")
    assert hf.config.problem_type == expected_problem

    out = import_hf(hf_dir, tmp_path / "wacht", name="roundtrip")
    engine = Engine.load(out, intra_op_threads=1)
    manifest = engine.manifest
    assert manifest.name == "roundtrip" and manifest.precision == "fp32"
    (imported,) = manifest.tasks
    assert imported.name == task and imported.output == "logits"
    assert imported.label_names == tuple(spec.labels)
    if task == "toxicity":
        assert imported.activation == "sigmoid"
        assert {lab.name: lab.category for lab in imported.labels} == {
            "offensive": "toxicity", "hate": "hate", "insult": "insult",
            "profanity": "profanity"}
        assert {lab.name: lab.threshold for lab in imported.labels}["hate"] == 0.3
    else:
        assert imported.activation == "softmax"
        assert all(lab.category is None for lab in imported.labels)

    windows = [e.windows[0] for e in engine.encode(TEXTS)]
    served = engine.forward(windows)["logits"]
    index = [m.name for m in multi.head_specs].index(task)
    with torch.no_grad():
        for i, w in enumerate(windows):
            ids = torch.tensor([w])
            ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()[0]
            assert np.max(np.abs(served[i] - ref)) <= 1e-4
            multi_ref = multi(ids, torch.ones_like(ids), torch.zeros_like(ids))[index].numpy()[0]
            assert np.max(np.abs(served[i] - multi_ref)) <= 1e-4
