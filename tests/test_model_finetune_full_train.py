"""`wacht models finetune --mode full` (models/finetune_full.py + graft.merge_branch); train env.

One tiny run (3 topics x 20 synthetic rows, one epoch) is shared by the module's tests; a
second, two steps from a training checkpoint with a --val file, checks the other start.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_model_finetune_train import TOPICS, rows, write

pytestmark = pytest.mark.train
pytest.importorskip("torch")

MODEL = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"
OLD = ("sentiment_logits", "toxicity_logits")
PROBE = ["you are an idiot", "what a lovely morning", "the invoice is late again",
         "our striker scored twice", "this recipe needs more garlic", "my bank raised the fee"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from wacht.models.cli import main

    tmp = tmp_path_factory.mktemp("full")
    data = write(tmp / "train.csv", rows(1, 60))
    out = tmp / "topic-full"
    rc = main(["finetune", str(MODEL), "--data", str(data), "--task", "topic", "--out",
               str(out), "--mode", "full", "--epochs", "1", "--batch-size", "16",
               "--data-license", "CC0 (synthetic)"])
    assert rc == 0
    return out, data


def _session(path: Path):  # noqa: ANN202
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feeds(texts: list[str]) -> dict[str, np.ndarray]:
    from wacht.models.export import padded
    from wacht.service.runtime.tokenize import WindowTokenizer

    tok = WindowTokenizer.from_file(MODEL / "tokenizer.json", 256, 192)
    return padded([e.windows[0] for e in tok.encode(texts, "head", 1)])


def test_directory_loads_with_the_serving_loader_and_sums_verify(run: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    from wacht.service.runtime.model_dir import ModelDirError, load_model_dir

    out, _ = run
    md = load_model_dir(out)  # verifies SHA256SUMS
    assert [t.name for t in md.manifest.tasks] == ["sentiment", "toxicity", "topic"]
    listed = dict(reversed(line.split()) for line in
                  (out / "SHA256SUMS").read_text(encoding="utf-8").splitlines())
    assert set(listed) == {"model.onnx", "tokenizer.json", "manifest.yaml", "CARD.md",
                           "metrics.json"}
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest.lower()
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "CARD.md").write_text("edited\n", encoding="utf-8")
    with pytest.raises(ModelDirError):
        load_model_dir(broken)


def test_one_session_run_answers_old_heads_unchanged_and_the_new_task(
        run: tuple[Path, Path]) -> None:
    out, _ = run
    merged = _session(out / "model.onnx")
    names = [o.name for o in merged.get_outputs()]
    assert names == [*OLD, "topic_logits"]
    texts = PROBE + [t for t, _ in rows(2, 30)]
    feeds = _feeds(texts)
    old_here = merged.run(None, feeds)  # one run: every task
    served = _session(MODEL / "model.onnx").run(list(OLD), feeds)
    for a, b in zip(old_here[:2], served, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    topic = old_here[2]
    assert topic.shape == (len(texts), len(TOPICS))
    gold = [sorted(TOPICS).index(label) for _, label in rows(2, 30)]
    accuracy = float(np.mean(topic[len(PROBE):].argmax(1) == np.array(gold)))
    assert accuracy > 0.5  # chance is 1/3; held-out synthetic rows


def test_engine_serves_every_task_in_one_directory(run: tuple[Path, Path]) -> None:
    from wacht.service.runtime.engine import Engine

    out, _ = run
    new, old = Engine.load(out), Engine.load(MODEL)
    for a, b in zip(new.predict(PROBE), old.predict(PROBE), strict=True):
        assert set(a.scores) == {"sentiment", "toxicity", "topic"}
        for task in ("sentiment", "toxicity"):
            np.testing.assert_allclose(a.scores[task], b.scores[task], atol=1e-5)


def test_manifest_and_card_describe_full_mode_and_the_users_file(
        run: tuple[Path, Path]) -> None:
    out, data = run
    manifest = yaml.safe_load((out / "manifest.yaml").read_text(encoding="utf-8"))
    served = yaml.safe_load((MODEL / "manifest.yaml").read_text(encoding="utf-8"))
    assert manifest["tasks"][:2] == served["tasks"]
    assert manifest["tasks"][2] == {"name": "topic", "output": "topic_logits",
                                    "activation": "softmax",
                                    "labels": [{"name": n} for n in sorted(TOPICS)]}
    ft = manifest["provenance"]["finetune"]
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert ft["mode"] == "full" and ft["task"] == "topic"
    assert ft["encoder"].startswith("fine-tuned from base")
    assert ft["user_data"]["sha256"] == sha and ft["user_data"]["rows"] == 60
    assert ft["user_data"]["file"] == "train.csv"
    assert "--mode full" in ft["rebuild_command"]
    assert manifest["provenance"]["base_model"] == served["provenance"]["base_model"]
    card = (out / "CARD.md").read_text(encoding="utf-8")
    assert card.startswith("# topic-full\n\nFull fine-tune of `minilm-moderation`")
    assert "encoder: fine-tuned from base" in card
    assert "about 2x per forward" in card
    assert sha in card and "60 rows" in card and "CC0 (synthetic)" in card
    assert "## Training curve" in card and "stopped by epochs (1)" in card


def test_metrics_record_curve_quantisation_choice_merge_check_and_cost(
        run: tuple[Path, Path]) -> None:
    import json

    out, _ = run
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["mode"] == "full" and m["split"] == {
        "train": 54, "validation": 6, "validation_from": "hash split 10%, stratified"}
    t = m["training"]
    assert t["steps"] == 4 and t["epochs"] == 1.0 and t["stop_reason"] == "epochs (1)"
    assert [p["step"] for p in t["curve"]] == [4]
    e = m["export"]
    assert e["scheme"] == "fused-qint8-pc-rr"  # what the served model ships
    f1 = e["validation_macro_f1"]
    assert e["chosen"] == ("int8" if f1["int8"] >= f1["fp32"] - 0.005 else "fp32")
    assert m["validation_macro_f1"] == f1[e["chosen"]]
    assert e["fp32_vs_torch_max_abs"] < 1e-3
    merge = m["merge"]
    assert max(merge["old_heads_max_abs_diff"].values()) < 1e-5
    assert merge["new_head_vs_branch_max_abs_diff"] < 1e-5
    cost = merge["forward_cost"]
    assert cost["texts"] == 64 and cost["merged_over_served"] > 1.0  # two encoders


def write_multi(path: Path, data: list[tuple[str, str]]) -> Path:
    """0/1 columns per topic; every third row also mentions money."""
    names = sorted(TOPICS)
    lines = [f"text,{','.join(names)}\n"]
    for i, (text, label) in enumerate(data):
        hot = [int(n == label or (n == "money" and i % 3 == 0)) for n in names]
        lines.append(f"{text},{','.join(map(str, hot))}\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_full_mode_multi_label_from_a_checkpoint_with_a_val_file(tmp_path: Path) -> None:
    import json

    from wacht.models.finetune_full import FullConfig, finetune_full
    from wacht.models.multitask import from_base, save_checkpoint
    from wacht.service.runtime.engine import Engine

    ckpt = tmp_path / "checkpoint"
    save_checkpoint(from_base(seed=3), ckpt, {"steps": 0})
    out = tmp_path / "from-ckpt"
    columns = tuple(sorted(TOPICS))
    metrics = finetune_full(MODEL, write_multi(tmp_path / "train.csv", rows(1, 45)), "topics",
                            out, label_columns=columns,
                            val=write_multi(tmp_path / "val.csv", rows(3, 12)),
                            checkpoint=ckpt, cfg=FullConfig(max_steps=2, batch_size=16),
                            log=lambda _: None)
    assert metrics["split"] == {"train": 45, "validation": 12, "validation_from": "val.csv"}
    assert metrics["training"]["steps"] == 2
    assert metrics["training"]["stop_reason"] == "max-steps (2)"
    assert metrics["encoder"] == f"fine-tuned from checkpoint {ckpt}"
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == metrics
    assert f"encoder: fine-tuned from checkpoint {ckpt}" in (out / "CARD.md").read_text(
        encoding="utf-8")
    engine = Engine.load(out)
    task = engine.manifest.tasks[-1]
    assert (task.name, task.activation) == ("topics", "sigmoid")
    assert [(label.name, label.threshold) for label in task.labels] == [
        (n, 0.5) for n in columns]
    scores = engine.predict(PROBE[:2])[0].scores["topics"]
    assert len(scores) == 3 and all(0.0 <= v <= 1.0 for v in scores)


def test_adapt_with_mode_full_is_refused_with_exit_code_2(
        run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wacht.models.cli import main

    _, data = run
    out = tmp_path / "adapted"
    rc = main(["finetune", str(MODEL), "--data", str(data), "--adapt", "toxicity",
               "--mode", "full", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--mode full is for new tasks" in err and "--adapt toxicity" in err
    assert not out.exists()


def test_merge_branch_casts_inputs_and_keeps_the_model_outputs() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from wacht.models.graft import merge_branch

    def graph(dtype: int, op: str, out: str, scale: float) -> onnx.ModelProto:
        nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["f", "scale"], ["g"]),
                 helper.make_node(op, ["g"], [out], keepdims=0, axes=[1])]
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("input_ids", dtype, ["b", "s"])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["b"])],
            [numpy_helper.from_array(np.array(scale, np.float32), "scale")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])

    served = graph(TensorProto.INT32, "ReduceSum", "a_logits", 2.0)
    branch = graph(TensorProto.INT64, "ReduceMax", "b_logits", 3.0)
    merged = merge_branch(served, branch, "ft_b/")
    assert [i.name for i in merged.graph.input] == ["input_ids"]
    assert [o.name for o in merged.graph.output] == ["a_logits", "b_logits"]
    assert list(merged.graph.node)[:3] == list(served.graph.node)  # untouched, in front
    assert {i.name for i in merged.graph.initializer} == {"scale", "ft_b/scale"}
    x = np.array([[1, 5, 2], [7, 0, 3]])
    a, b = ort.InferenceSession(merged.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": x.astype(np.int32)})
    np.testing.assert_array_equal(a, [16.0, 20.0])
    np.testing.assert_array_equal(b, [15.0, 21.0])
    with pytest.raises(ValueError, match="already in the model"):
        merge_branch(served, graph(TensorProto.INT32, "ReduceMax", "a_logits", 1.0), "x/")


def test_early_stopping_and_class_weights() -> None:
    from wacht.models.finetune_full import EarlyStopping, class_weights

    stop = EarlyStopping(patience=2)
    assert stop.update(0.5, 10) and stop.update(0.6, 20)
    assert not stop.update(0.6, 30) and not stop.exhausted
    assert not stop.update(0.55, 40) and stop.exhausted
    assert (stop.best, stop.best_at) == (0.6, 20)
    assert not EarlyStopping(patience=0, bad=5).exhausted  # 0: never stops early
    w = class_weights(np.array([0, 0, 0, 1]), False, 3)
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 4 / 3])  # absent class: as if one row
    np.testing.assert_allclose(class_weights(np.array([[1, 0], [0, 0], [0, 0], [1, 1]]),
                                             True, 2), [1.0, 3.0])
