"""Head-only domain adaptation of an existing head (models/adapt.py + graft.add_residual)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train

MODEL = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"
# The stand-in moderators remove every comment about bananas, which no bundled set calls
# offensive: the adapted head has to learn it from the rows.
BANNED = ["bananas are the best", "I posted banana pics again", "more banana talk here",
          "banana banana banana", "who wants a banana", "the banana thread is back"]
FINE = ["the weather is nice today", "I fixed my bike", "see you at the meeting",
        "this recipe needs salt", "the train was on time", "my cat sleeps all day"]


def rows(seed: int, n: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(f"{rng.choice(BANNED if i % 2 else FINE)} #{rng.randint(0, 9999)}", i % 2)
            for i in range(n)]


def write_user(path: Path, data: list[tuple[str, int]]) -> Path:
    path.write_text("text,offensive\n" + "".join(f"{t},{y}\n" for t, y in data),
                    encoding="utf-8")
    return path


def tiny_eval_data(root: Path) -> Path:
    """A bundled-data directory with one set per head (sst2 -> sentiment, cad -> toxicity)."""
    (root / "sst2").mkdir(parents=True)
    (root / "cad").mkdir()
    (root / "sst2" / "dev.tsv").write_text(
        "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in [
            ("a charming and affecting journey", 1), ("bleak and desperate", 0),
            ("the best film of the year", 1), ("a tedious mess", 0)] * 15), encoding="utf-8")
    pairs = [(f"{t} #{i}", "hatespeech" if i % 3 == 0 else "normal")
             for i, t in enumerate(["you are a disgusting idiot", "nice work on the patch",
                                    "go away you moron", "thanks for sharing"] * 15)]
    (root / "cad" / "val.json").write_text(json.dumps(pairs), encoding="utf-8")
    return root


def test_adapt_changes_only_the_adapted_logits_and_reports_drift(tmp_path: Path) -> None:
    from wacht.models.adapt import adapt
    from wacht.service.runtime.engine import Engine

    out = tmp_path / "adapted"
    metrics = adapt(MODEL, write_user(tmp_path / "comments.csv", rows(1, 200)), "toxicity",
                    out, label_columns=("offensive",), data_license="CC0 (synthetic)",
                    eval_data=tiny_eval_data(tmp_path / "data"))
    before, after = (metrics["user_validation"][k]["roc_auc"]["offensive"]
                     for k in ("before", "after"))
    assert after > before and after > 0.9
    new, old = Engine.load(out), Engine.load(MODEL)
    texts = ["a banana thread again", "you are an idiot", "what a lovely morning"]
    a, b = new.predict(texts), old.predict(texts)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.scores["sentiment"], y.scores["sentiment"], atol=1e-5)
        # hate, insult, profanity: not in the user's file -> unchanged
        np.testing.assert_allclose(x.scores["toxicity"][1:], y.scores["toxicity"][1:],
                                   atol=1e-5)
    assert a[0].scores["toxicity"][0] > b[0].scores["toxicity"][0] + 0.1
    drift = metrics["drift"]
    assert drift["other_heads_max_abs_delta"] == 0.0 and drift["bar_other_heads_below_1_point"]
    assert {r["head"] for r in drift["rows"]} == {"sentiment", "toxicity"}
    card = (out / "CARD.md").read_text(encoding="utf-8")
    assert "## Drift on the bundled evaluation sets" in card
    assert "| sst2_dev/macro_f1 | sentiment |" in card and "comments.csv" in card
    assert json.loads((out / "metrics.json").read_text())["drift"]["rows"] == drift["rows"]


@pytest.mark.parametrize("softmax", [True, False])
def test_fit_delta_lowers_the_loss_and_a_larger_penalty_changes_less(softmax: bool) -> None:
    from wacht.models.adapt import fit_delta, log_loss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    base = rng.normal(size=(300, 3))
    truth = x @ rng.normal(size=(8, 3))
    y = truth.argmax(1) if softmax else (truth > 0).astype(int)
    sizes = []
    for penalty in (1e-4, 1.0):
        dw, db = fit_delta(x, base, y, softmax, penalty)
        assert log_loss(base + x @ dw + db, y, softmax) < log_loss(base, y, softmax)
        sizes.append(np.abs(dw).sum())
    assert sizes[1] < sizes[0] / 3


def test_fit_delta_anchor_keeps_the_logits_on_anchor_texts() -> None:
    """The anchor term holds the change of the logits on the anchor rows (texts of the
    head's original domains) down, while the fit still lowers the loss on the user's rows."""
    from wacht.models.adapt import fit_delta, log_loss

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)) + 1.0  # the user's domain
    anchor = rng.normal(size=(400, 8)) - 1.0  # elsewhere
    base = rng.normal(size=(300, 2))
    y = ((x @ rng.normal(size=(8, 2))) > 0).astype(int)
    changes = []
    for weight in (0.0, 10.0):
        dw, db = fit_delta(x, base, y, False, 1e-3, anchor, weight)
        assert log_loss(base + x @ dw + db, y, False) < log_loss(base, y, False)
        changes.append(float(np.abs(anchor @ dw + db).mean()))
    assert changes[1] < changes[0] / 3, changes


def test_anchor_texts_are_a_fixed_sample_of_the_heads_training_texts() -> None:
    from wacht.models.adapt import anchor_texts
    from wacht.models.data import DEFAULT_DATA_DIR, training_sources

    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"{DEFAULT_DATA_DIR} is absent (the shared datasets)")
    first = anchor_texts(DEFAULT_DATA_DIR, "toxicity", 50)
    assert first == anchor_texts(DEFAULT_DATA_DIR, "toxicity", 50) and len(set(first)) == 50
    sources = training_sources(DEFAULT_DATA_DIR)
    toxic = {e.text for rows in sources.values() for e in rows
             if any(v is not None for v in e.toxicity)}
    assert set(first) <= toxic
    sentiment = anchor_texts(DEFAULT_DATA_DIR, "sentiment", 50)
    assert set(sentiment) <= {e.text for rows in sources.values() for e in rows
                              if e.sentiment >= 0}
    assert anchor_texts(DEFAULT_DATA_DIR, "ticket_topic", 50) == []  # not a bundled head
