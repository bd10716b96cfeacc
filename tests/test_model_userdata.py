"""The user's labelled file (models/userdata.py) and `wacht models eval --data FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wacht.models.cli import main as models_main
from wacht.models.evaluate import file_metrics
from wacht.models.userdata import UserDataError, load, read_labels_file
from wacht.service.runtime.model_dir import LabelSpec, TaskSpec

MODEL = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"

ROWS = [
    ("I love this so much", "positive"),
    ("This is terrible and I hate it", "negative"),
    ("What a wonderful day", "positive"),
    ("The package arrived on Tuesday", "neutral"),
    ("worst service ever", "negative"),
]


@pytest.fixture(autouse=True)
def _structlog_defaults():  # noqa: ANN202
    """`wacht models eval` points structlog at the (captured, later closed) stderr."""
    import structlog

    yield
    structlog.reset_defaults()


def write_csv(path: Path, rows=ROWS, header="text,label") -> Path:  # noqa: ANN001
    lines = [header] + [f'"{t}",{lab}' for t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_and_jsonl_give_the_same_rows(tmp_path: Path) -> None:
    a = load(write_csv(tmp_path / "a.csv"))
    jl = tmp_path / "a.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS))
    b = load(jl)
    assert a.texts == b.texts and a.labels == b.labels == ("negative", "neutral", "positive")
    assert a.gold.tolist() == b.gold.tolist() == [2, 0, 2, 1, 0]
    assert a.label_counts() == {"negative": 2, "neutral": 1, "positive": 2}
    assert len(a.sha256) == 64


def test_multi_label_columns(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("body,spam,abuse\nbuy now,1,0\nyou idiot,0,1\nhello,0,0\n", encoding="utf-8")
    lf = load(p, "body", ("spam", "abuse"))
    assert lf.multi_label and lf.gold.tolist() == [[1, 0], [0, 1], [0, 0]]
    p.write_text("body,spam,abuse\nbuy now,maybe,0\n", encoding="utf-8")
    with pytest.raises(UserDataError, match=r"row 1: column 'spam': expected 0/1"):
        load(p, "body", ("spam", "abuse"))


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        p.write_bytes(b"PAR1")
        with pytest.raises(UserDataError, match="Parquet needs pyarrow"):
            load(p)
        return
    pq.write_table(pa.table({"text": [t for t, _ in ROWS], "label": [x for _, x in ROWS]}), p)
    assert load(p).gold.tolist() == [2, 0, 2, 1, 0]


def test_bad_input_errors_are_precise(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "a.csv")
    with pytest.raises(UserDataError, match=r"no column 'message'"):
        load(p, text_column="message")
    with pytest.raises(UserDataError, match=r"no column 'topic'"):
        load(p, label_columns=("topic",))
    with pytest.raises(UserDataError, match=r"row 4: column 'label': label 'neutral' is not one"):
        load(p, labels=("negative", "positive"))
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(UserDataError, match="no rows"):
        load(empty)
    blank = write_csv(tmp_path / "b.csv", [("", "positive"), ("x", "negative")])
    with pytest.raises(UserDataError, match=r"row 1: column 'text' is empty"):
        load(blank)
    with pytest.raises(UserDataError, match="unknown file type"):
        load(write_csv(tmp_path / "a.xlsx"))
    with pytest.raises(UserDataError, match="no such file"):
        load(tmp_path / "missing.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n[1]\n', encoding="utf-8")
    with pytest.raises(UserDataError, match=r"bad.jsonl:2: not a JSON object"):
        load(bad)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(UserDataError, match="repeats"):
        read_labels_file(labels)


def test_confusion_matrix_on_a_hand_checked_case() -> None:
    task = TaskSpec("topic", "topic_logits", "softmax",
                    (LabelSpec("a"), LabelSpec("b"), LabelSpec("c")))
    # predicted (argmax): a, a, b, c, c, b ; gold: a, b, b, c, a, b
    scores = np.array([[.8, .1, .1], [.6, .3, .1], [.1, .8, .1], [.1, .1, .8], [.2, .2, .6],
                       [.3, .4, .3]])
    gold = np.array([0, 1, 1, 2, 0, 1])
    m = file_metrics(task, scores, gold)
    assert m["confusion_matrix"]["rows_gold_cols_predicted"] == [[1, 0, 1], [1, 2, 0],
                                                                 [0, 0, 1]]
    assert m["accuracy"] == round(4 / 6, 4)
    assert m["labels"]["c"]["f1"] == round(2 / 3, 4)  # tp 1, fp 1, fn 0
    assert m["labels"]["b"]["f1"] == 0.8  # tp 2, fp 0, fn 1
    sig = TaskSpec("flags", "f", "sigmoid", (LabelSpec("x", threshold=0.5),))
    s = file_metrics(sig, np.array([[.9], [.4], [.6], [.1]]), np.array([[1], [1], [0], [0]]))
    assert s["labels"]["x"]["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}


def test_eval_cli_on_a_user_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_csv(tmp_path / "mine.csv")
    out = tmp_path / "m.json"
    assert models_main(["eval", str(MODEL), "--data", str(data), "--task", "sentiment",
                        "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["data"]["rows"] == 5 and m["data"]["file"] == "mine.csv"
    assert m["confusion_matrix"]["rows_gold_cols_predicted"] == [[2, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert "confusion matrix" in capsys.readouterr().out
    assert models_main(["eval", str(MODEL), "--data", str(data), "--task", "toxicity"]) == 2
    assert "not labels of task 'toxicity'" in capsys.readouterr().err
    assert models_main(["eval", str(MODEL), "--data", str(data)]) == 2
    assert "--task is needed" in capsys.readouterr().err


def test_calibrate_meets_the_named_precision(tmp_path: Path) -> None:
    import shutil

    import yaml

    from wacht.models.calibrate import calibrate
    from wacht.service.runtime.engine import Engine

    model = tmp_path / "m"
    shutil.copytree(MODEL, model)
    good = ["have a lovely day", "thanks for the help", "the train was on time", "nice photo",
            "see you tomorrow", "great work everyone", "the weather is mild", "I agree"]
    bad = ["you are a fucking idiot", "shut up you moron", "go to hell you piece of shit",
           "you stupid bitch", "fuck off loser", "what a dumb asshole"]
    rows = [(t, 0, 0) for t in good] + [(t, 1, 1) for t in bad]
    data = tmp_path / "tox.csv"
    data.write_text("text,offensive,insult\n" + "".join(f"{t},{a},{b}\n" for t, a, b in rows))
    result = calibrate(model, data, "toxicity", "precision=0.9", "text",
                       ("offensive", "insult"))
    engine = Engine.load(model)  # SHA256SUMS refreshed, manifest thresholds written
    task = engine.manifest.task("toxicity")
    scores = np.stack([r.scores["toxicity"] for r in engine.predict([t for t, _, _ in rows])])
    for name in ("offensive", "insult"):
        t = next(lab.threshold for lab in task.labels if lab.name == name)
        assert t == result[name]["threshold"]
        flagged = scores[:, task.label_names.index(name)] >= t
        gold = np.array([a for _, a, _ in rows]) == 1
        assert flagged.sum() and (flagged & gold).sum() / flagged.sum() >= 0.9
    manifest = yaml.safe_load((model / "manifest.yaml").read_text())
    assert manifest["provenance"]["calibration"]["target"] == "precision=0.9"
    assert "calibrated on `tox.csv`" in (model / "CARD.md").read_text()


def test_calibrate_rerun_replaces_its_card_section_and_bad_targets_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from wacht.models.cli import main as models_main

    model = tmp_path / "m"
    shutil.copytree(MODEL, model)
    rows = [("have a lovely day", 0), ("thanks for the help", 0), ("nice photo", 0),
            ("you are a fucking idiot", 1), ("shut up you moron", 1), ("I agree", 0)]
    data = tmp_path / "tox.csv"
    data.write_text("text,offensive\n" + "".join(f"{t},{y}\n" for t, y in rows))
    base = ["calibrate", str(model), "--data", str(data), "--task", "toxicity",
            "--label-column", "offensive"]  # one 0/1 column of the multi-label head
    manifest_before = (model / "manifest.yaml").read_text()
    for target in ("precision=1.5", "fmax", "recall=abc"):
        assert models_main([*base, "--target", target]) == 2
        assert "--target" in capsys.readouterr().err
    assert models_main([*base[:5], "nope", "--target", "f1"]) == 2
    assert "has tasks" in capsys.readouterr().err
    assert (model / "manifest.yaml").read_text() == manifest_before  # nothing written
    for target in ("f1", "recall=0.5", "f1"):
        assert models_main([*base, "--target", target]) == 0
    card = (model / "CARD.md").read_text()
    assert card.count("## Thresholds of `toxicity` calibrated on `tox.csv`") == 1
    assert card.rstrip().endswith("|") and "target f1" in card and "recall=0.5" not in card


def test_calibrate_unreachable_precision_names_the_best_it_reaches() -> None:
    from wacht.models.calibrate import CalibrationError, choose, curve

    gold = np.array([1, 0, 0, 0] * 5)
    with pytest.raises(CalibrationError, match=r"precision 0.9 .*best 0.250"):
        choose(curve(gold, np.full(20, 0.5)), "precision=0.9")


def test_validation_split_is_stratified_and_deterministic() -> None:
    from wacht.models.finetune import val_mask

    texts = [f"row {i}" for i in range(230)]
    gold = np.array([0] * 200 + [1] * 20 + [2] * 10)
    mask = val_mask(texts, 10, gold)
    assert [int(mask[gold == c].sum()) for c in (0, 1, 2)] == [20, 2, 1]
    assert (val_mask(texts, 10, gold) == mask).all()
    assert val_mask(texts[:5], 10).shape == (5,)  # unstratified: by hash alone


@pytest.mark.parametrize("example,labels,rows", [
    ("toxigen-framing", {"moral", "cause", "solution"}, 2275),
    ("toxigen-factual", {"opinion", "factual", "neither"}, 5407),
    ("olid-target", {"IND", "GRP", "OTH"}, 3876),
])
def test_public_examples_write_labelled_files_the_loader_reads(
        tmp_path: Path, example: str, labels: set[str], rows: int) -> None:
    from wacht.models.data import DEFAULT_DATA_DIR
    from wacht.models.examples import main as examples_main

    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"{DEFAULT_DATA_DIR} is absent (the shared datasets)")
    out = tmp_path / f"{example}.csv"
    assert examples_main([example, "--out", str(out)]) == 0
    lf = load(out)
    assert len(lf.texts) == rows and set(lf.labels) == labels
    assert not any(t.startswith(("b'", 'b"')) or "\\n" in t for t in lf.texts)
