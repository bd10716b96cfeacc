"""The committed default model directory: contract, honesty of metrics.json, quality bars.

Runs in the serving environment (onnxruntime only). Quality bars read ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wacht.models import SENTIMENT_LABELS, TOXICITY_CATEGORIES, TOXICITY_LABELS
from wacht.models.data import DEFAULT_DATA_DIR, evaluation_sets
from wacht.models.evaluate import headline, sentiment_metrics, toxicity_metrics, worse_than
from wacht.service.runtime.model_dir import load_model_dir, sha256_file

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "minilm-moderation"


@pytest.fixture(scope="module")
def model_dir():
    return load_model_dir(MODEL_DIR, verify=True)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((MODEL_DIR / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def engine():
    from wacht.service.runtime.engine import Engine

    return Engine.load(MODEL_DIR, intra_op_threads=2)


def test_directory_has_every_file_and_is_small():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"model.onnx", "tokenizer.json", "manifest.yaml", "CARD.md", "metrics.json",
            "SHA256SUMS"} <= names
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert total < 30 * 1024 * 1024


def test_sha256sums_cover_every_file_and_match(model_dir):
    files = {p.name for p in MODEL_DIR.iterdir() if p.is_file() and p.name != "SHA256SUMS"}
    assert set(model_dir.checksums) == files
    for name, digest in model_dir.checksums.items():
        assert sha256_file(MODEL_DIR / name) == digest


def test_manifest_matches_the_interface(model_dir):
    m = model_dir.manifest
    assert m.name == "minilm-moderation" and m.precision == "int8"
    assert m.inputs == ("input_ids", "attention_mask", "token_type_ids")
    sentiment, toxicity = m.task("sentiment"), m.task("toxicity")
    assert (sentiment.output, sentiment.activation) == ("sentiment_logits", "softmax")
    assert sentiment.label_names == SENTIMENT_LABELS
    assert (toxicity.output, toxicity.activation) == ("toxicity_logits", "sigmoid")
    assert toxicity.label_names == TOXICITY_LABELS
    assert {lab.name: lab.category for lab in toxicity.labels} == TOXICITY_CATEGORIES
    assert all(0.0 < lab.threshold < 1.0 for lab in toxicity.labels)
    assert 0 < m.window_stride < m.max_length <= 512


def test_tokenizer_leaves_padding_and_truncation_to_the_runtime():
    tok = json.loads((MODEL_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["padding"] is None and tok["truncation"] is None


def test_card_quotes_the_checksums_and_rebuild_command(model_dir):
    card = (MODEL_DIR / "CARD.md").read_text(encoding="utf-8")
    for name in ("model.onnx", "tokenizer.json", "manifest.yaml", "metrics.json"):
        assert model_dir.checksums[name] in card
    assert model_dir.manifest.provenance["rebuild_command"] in card
    for needed in ("Apache-2.0", "sst2", "tweeteval_hate", "davidson", "Limitations",
                   "English only", "neutral"):
        assert needed in card


def test_int8_within_one_point_of_fp32(metrics):
    assert metrics["precision"] == "int8"
    int8, fp32 = metrics["by_precision"]["int8"], metrics["by_precision"]["fp32"]
    assert headline(int8).keys() == headline(fp32).keys() and headline(int8)
    worse = worse_than(int8, fp32)
    assert not worse, f"int8 more than 1 point below fp32: {worse}"


def test_fp32_export_parity_recorded(metrics):
    assert metrics["parity"]["fp32_vs_torch_max_abs"] <= 1e-4


def _live(engine, name: str):
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"{DEFAULT_DATA_DIR} not present")
    sets = {s.name: s for s in evaluation_sets(DEFAULT_DATA_DIR)}
    if name not in sets:
        pytest.skip(f"{name} data not present under {DEFAULT_DATA_DIR}")
    s = sets[name]
    import numpy as np

    scores = np.stack([r.scores[s.task] for r in engine.predict(s.texts)])
    if s.task == "sentiment":
        return sentiment_metrics(s, scores)
    task = engine.manifest.task("toxicity")
    return toxicity_metrics(s, scores, list(task.label_names),
                            {lab.name: lab.threshold for lab in task.labels})


@pytest.mark.data
def test_sst2_dev_accuracy_bar_and_metrics_json_agrees(engine, metrics):
    live = _live(engine, "sst2_dev")
    assert live["accuracy"] >= 0.86
    assert live["accuracy"] == pytest.approx(metrics["datasets"]["sst2_dev"]["accuracy"],
                                             abs=0.002)


@pytest.mark.data
def test_tweeteval_offensive_macro_f1_bar_and_metrics_json_agrees(engine, metrics):
    live = _live(engine, "tweeteval_offensive_test")
    assert live["macro_f1"] >= 0.75
    recorded = metrics["datasets"]["tweeteval_offensive_test"]["macro_f1"]
    assert live["macro_f1"] == pytest.approx(recorded, abs=0.002)
