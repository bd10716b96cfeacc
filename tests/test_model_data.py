"""Model-factory logic without torch: label mapping, splits, metrics, importer label rules."""

from __future__ import annotations

import numpy as np
import pytest

from wacht.models.data import DEFAULT_DATA_DIR, evaluation_sets, split_bucket, training_sources
from wacht.models.importer import canonical_category, default_task_name, parse_category_overrides
from wacht.models.thresholds import best_threshold, macro_f1, roc_auc


def test_roc_auc_known_values_and_ties():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == 0.75
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_macro_f1_and_best_threshold():
    gold = np.array([0, 0, 0, 1, 1])
    assert macro_f1(gold, gold, 2) == 1.0
    assert macro_f1(gold, np.zeros(5, dtype=int), 2) == pytest.approx(0.75 / 2)
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    threshold, score = best_threshold([(gold, scores)])
    assert 0.3 < threshold <= 0.6 and score == 1.0
    masked = np.array([0, -1, 0, 1, 1])
    assert best_threshold([(masked, scores)])[1] == 1.0


def test_split_bucket_is_deterministic():
    assert split_bucket("hello") == split_bucket("hello")
    assert 0 <= split_bucket("x", 10) < 10


def test_importer_category_rules():
    assert canonical_category("toxic") == "toxicity"
    assert canonical_category("Identity Hate") == "hate"
    assert canonical_category("obscene") == "profanity"
    assert canonical_category("severe_toxic") == "severe_toxicity"
    assert canonical_category("LABEL_0") is None
    assert parse_category_overrides(["a=insult", "b="]) == {"a": "insult", "b": None}
    with pytest.raises(ValueError):
        parse_category_overrides(["nonsense"])
    assert default_task_name(["negative", "positive"], {}) == "sentiment"
    assert default_task_name(["toxic", "clean"], {"toxic": "toxicity"}) == "toxicity"
    assert default_task_name(["LABEL_0"], {"LABEL_0": None}) == "classification"


@pytest.fixture(scope="module")
def data():
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"{DEFAULT_DATA_DIR} not present")
    return training_sources(DEFAULT_DATA_DIR), {s.name: s for s in
                                                 evaluation_sets(DEFAULT_DATA_DIR)}


@pytest.mark.data
def test_training_sources_map_labels_as_documented(data):
    sources, _ = data
    assert len(sources["sst2"]) == 67349
    assert all(e.sentiment_binary and e.sentiment in (0, 2) for e in sources["sst2"])
    three = sources["tweeteval_sentiment"]
    assert {e.sentiment for e in three} == {0, 1, 2} and not any(e.sentiment_binary for e in three)
    offensive = sources["tweeteval_offensive"]
    assert len(offensive) == 11916
    # OLID level B is found for almost every tweet: TIN -> insult, UNT -> profanity
    assert sum(e.toxicity[2] is not None for e in offensive) > 11800
    assert all(e.toxicity[2] == e.toxicity[3] == 0.0 for e in offensive if e.toxicity[0] == 0
               and e.toxicity[2] is not None)
    assert all(e.toxicity[1] is None for e in offensive)
    hate = sources["tweeteval_hate"]
    assert all(e.toxicity[0] == 1.0 for e in hate if e.toxicity[1] == 1.0)
    assert all(e.toxicity[0] is None for e in hate if e.toxicity[1] == 0.0)
    assert not any("&amp;" in e.text for e in sources["davidson"])
    assert not any(e.text.startswith(("b'", 'b"')) for e in sources["toxigen"])
    assert all(e.toxicity[1] is None for e in sources["cad"] if e.toxicity[0] == 1.0)


@pytest.mark.data
def test_no_evaluation_text_is_trained_on(data):
    sources, sets = data
    train_texts = {e.text for rows in sources.values() for e in rows}
    for name in ("tweeteval_sentiment_heldout", "davidson_test", "toxigen_test"):
        assert not train_texts & set(sets[name].texts), name
    # TweetEval offensive test = OLID test A: 4 tweets also occur in OLID train (SOURCE.txt)
    assert len(train_texts & set(sets["tweeteval_offensive_test"].texts)) <= 11


@pytest.mark.data
def test_evaluation_sets_have_the_documented_sizes(data):
    _, sets = data
    assert len(sets["sst2_dev"].texts) == 872
    assert len(sets["tweeteval_offensive_test"].texts) == 860
    olid = sets["olid_test"].gold
    assert sum(olid["insult"]) == 213 and sum(olid["profanity"]) == 27
    assert len(sets["tweeteval_hate_test"].texts) == 2970
    assert set(sets["jigsaw_sample"].gold) == {"offensive", "hate", "insult", "profanity"}


def test_serving_side_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, wacht.models.cli, wacht.models.evaluate, wacht.models.data, "
            "wacht.models.importer; "
            "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_eval_cli_on_a_small_data_dir(tmp_path, capsys):
    import json
    from pathlib import Path

    from wacht.models.cli import main

    model = Path(__file__).resolve().parent.parent / "models" / "minilm-moderation"
    if not (model / "manifest.yaml").is_file():
        pytest.skip("default model not present")
    (tmp_path / "sst2").mkdir()
    rows = ["what a wonderful , moving film\t1", "a dull , lifeless mess\t0",
            "the best thing i have seen this year\t1", "tedious and badly acted\t0"]
    (tmp_path / "sst2" / "dev.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    off = tmp_path / "tweeteval" / "offensive"
    off.mkdir(parents=True)
    (off / "test_text.txt").write_text("have a nice day @user\nyou are a fucking idiot\n")
    (off / "test_labels.txt").write_text("0\n1\n")
    out = tmp_path / "metrics.json"
    import structlog

    saved = structlog.get_config()  # the eval command points runtime logs at stderr
    try:
        code = main(["eval", str(model), "--data", str(tmp_path), "--json", "--out", str(out)])
    finally:
        structlog.configure(**saved)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert set(printed["datasets"]) == {"sst2_dev", "tweeteval_offensive_test"}
    sst2 = printed["datasets"]["sst2_dev"]
    assert sst2["n"] == 4 and 0.0 <= sst2["accuracy"] <= 1.0
    offensive = printed["datasets"]["tweeteval_offensive_test"]
    assert offensive["labels"]["offensive"]["positives"] == 1
    assert printed["precision"] == "int8"
