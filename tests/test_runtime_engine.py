"""The engine on the real default model: windows, padding invariance, truncation modes,
checksum refusal, providers, optional token_type_ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from wacht.service.runtime.engine import EncodedText, Engine, TextTooLong, build_feeds
from wacht.service.runtime.model_dir import ModelDirError
from wacht.service.runtime.session import requested_providers

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"

BENIGN = (
    "The weather in the valley was mild this week, and the farmers' market opened early on "
    "Saturday with fresh bread, apples and cheese from the nearby villages. "
)
TOXIC = "You are a stupid fucking idiot and everyone hates you, shut up."


@pytest.fixture(scope="module")
def engine() -> Engine:
    if not (MODEL_DIR / "manifest.yaml").is_file():
        pytest.skip(f"{MODEL_DIR} is absent (the default model is not committed yet)")
    return Engine.load(MODEL_DIR, intra_op_threads=2)


def tolerance(engine: Engine) -> float:
    return 1e-4 if engine.manifest.precision == "fp32" else 2e-2


def toxicity(engine: Engine, text: str, truncation: str = "window") -> float:
    [scores] = engine.predict([text], truncation=truncation)
    return float(scores.scores["toxicity"].max())


def test_loads_on_cpu_and_reports_the_providers_in_use(engine):
    assert engine.providers == ["CPUExecutionProvider"]
    assert set(engine.input_types) >= {"input_ids", "attention_mask"}
    assert set(engine.input_types) <= {"input_ids", "attention_mask", "token_type_ids"}


def test_scores_follow_the_manifest(engine):
    [scores] = engine.predict(["what a lovely day"])
    for task in engine.manifest.tasks:
        probs = scores.scores[task.name]
        assert probs.dtype == np.float32 and probs.shape == (len(task.labels),)
        assert np.all((probs >= 0) & (probs <= 1))
        if task.activation == "softmax":
            assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_toxic_phrase_at_the_end_of_a_long_text_is_still_found(engine):
    long_text = BENIGN * 30 + TOXIC
    [enc] = engine.encode([long_text])
    assert len(enc.windows) > 2
    assert toxicity(engine, TOXIC) > 0.5, "the model should flag the phrase on its own"
    labels = engine.manifest.task("toxicity").labels
    [window] = engine.predict([long_text])
    [head] = engine.predict([long_text], truncation="head")
    # sigmoid tasks take the max over windows: the last window holds the phrase
    last = EncodedText(windows=enc.windows[-1:], tokens=enc.tokens)
    [tail] = engine.scores_from_logits([last], engine.forward(last.windows))
    assert np.all(window.scores["toxicity"] >= tail.scores["toxicity"] - tolerance(engine))
    assert window.scores["toxicity"][0] > head.scores["toxicity"][0]
    flagged = [
        label.name
        for label, score in zip(labels, window.scores["toxicity"], strict=True)
        if score >= label.threshold
    ]
    assert flagged, f"not flagged: {window.scores['toxicity']} vs manifest thresholds"


def test_head_scores_the_first_window_only(engine):
    text = BENIGN * 30
    [head] = engine.predict([text], truncation="head")
    [window] = engine.predict([text], truncation="window")
    assert head.windows == 1 and window.windows > 1
    assert head.tokens == window.tokens > engine.manifest.max_length
    [encoded] = engine.encode([text])
    first = EncodedText(windows=encoded.windows[:1], tokens=encoded.tokens)
    [expected] = engine.scores_from_logits([first], engine.forward(first.windows))
    for task in engine.manifest.tasks:
        np.testing.assert_allclose(head.scores[task.name], expected.scores[task.name], atol=1e-6)


def test_reject_raises_with_the_index_of_the_long_text(engine):
    with pytest.raises(TextTooLong) as err:
        engine.predict(["short one", BENIGN * 30], truncation="reject")
    assert err.value.index == 1
    assert err.value.limit == engine.manifest.max_length - engine.tokenizer.specials
    assert err.value.tokens > err.value.limit


def test_padding_does_not_change_scores(engine):
    short = "thanks, that was helpful"
    [alone] = engine.predict([short])
    batch = [short, BENIGN, BENIGN * 2, "ok"]
    together = engine.predict(batch, batch_tokens=10**6, batch_size=64)  # one padded forward
    windows = engine.encode(batch)
    assert len({len(e.windows[0]) for e in windows}) == 4  # the short text really is padded
    for task in engine.manifest.tasks:
        np.testing.assert_allclose(
            alone.scores[task.name], together[0].scores[task.name], atol=tolerance(engine)
        )


def test_softmax_is_token_weighted_and_sigmoid_is_max_over_windows(engine):
    spec = engine.tokenizer.specials
    encoded = [EncodedText(windows=[[0] * (30 + spec), [0] * (10 + spec)], tokens=40)]
    sentiment = engine.manifest.task("sentiment")
    tox = engine.manifest.task("toxicity")
    s_logits = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=np.float32))
    t_logits = np.array([[-3.0, 2.0, 0.0, -1.0], [1.0, -2.0, 0.0, -4.0]], dtype=np.float32)
    [scores] = engine.scores_from_logits(
        encoded, {sentiment.output: s_logits, tox.output: t_logits}
    )
    expected = (np.array([0.6, 0.3, 0.1]) * 30 + np.array([0.2, 0.2, 0.6]) * 10) / 40
    np.testing.assert_allclose(scores.scores["sentiment"], expected, atol=1e-6)
    np.testing.assert_allclose(
        scores.scores["toxicity"], 1 / (1 + np.exp(-t_logits.max(axis=0))), atol=1e-6
    )
    assert scores.windows == 2 and scores.tokens == 40


def test_feeds_only_the_inputs_the_graph_declares():
    windows = [[5, 6, 7], [5]]
    two = build_feeds({"input_ids": np.int64, "attention_mask": np.int64}, windows, pad_id=9)
    assert set(two) == {"input_ids", "attention_mask"}
    assert two["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert two["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    three = build_feeds(
        {"input_ids": np.int32, "attention_mask": np.int32, "token_type_ids": np.int32},
        windows,
        pad_id=0,
    )
    assert three["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert three["input_ids"].dtype == np.int32


def test_forward_feeds_what_the_real_graph_declares(engine):
    declared = {i.name for i in engine.session.get_inputs()}
    assert set(engine.input_types) == declared
    logits = engine.forward(engine.encode(["a", "b c d"])[0].windows * 2)
    assert {t.output for t in engine.manifest.tasks} == set(logits)


def copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    for f in MODEL_DIR.iterdir():
        if f.name == "model.onnx":
            (target / f.name).symlink_to(f)
        elif f.is_file():
            shutil.copy(f, target / f.name)
    return target


def test_checksum_mismatch_is_refused(engine, tmp_path):
    target = copy_model(tmp_path)
    with (target / "tokenizer.json").open("a", encoding="utf-8") as f:
        f.write(" ")
    with pytest.raises(ModelDirError, match="tokenizer.json"):
        Engine.load(target)


def test_cuda_request_on_a_cpu_build_falls_back_with_a_warning(engine):
    with capture_logs() as logs:
        gpu = Engine.load(MODEL_DIR, device="cuda", intra_op_threads=1)
    assert gpu.providers == ["CPUExecutionProvider"]
    assert any(e["log_level"] == "warning" and "cuda" in e["event"] for e in logs)


def test_device_names_are_checked():
    assert requested_providers("cpu") == ["CPUExecutionProvider"]
    assert requested_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": "1"})
    with pytest.raises(ValueError):
        requested_providers("tpu")
