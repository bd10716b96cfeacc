"""The batcher over the real default model: concurrent callers get the scores that the
engine gives each text on its own (windows of one text spread over micro-batches too)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from wacht.service.batching.batcher import Batcher, BatchingConfig
from wacht.service.runtime.engine import Engine

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"

TEXTS = [
    "have a great weekend everyone",
    "you are a worthless idiot",
    "The council approved the new budget after a long debate about road repairs. " * 20,
    "meh",
    "I can't believe how bad the service was, never again!",
    "",
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    if not (MODEL_DIR / "manifest.yaml").is_file():
        pytest.skip(f"{MODEL_DIR} is absent (the default model is not committed yet)")
    return Engine.load(MODEL_DIR, intra_op_threads=1)


async def test_concurrent_callers_get_their_own_scores(engine):
    """With the default micro-batches (one window per forward) a text's scores do not
    depend on other traffic, even for a dynamically quantised int8 model."""
    alone = [engine.predict([t], batch_size=1)[0] for t in TEXTS]
    batcher = Batcher(engine, BatchingConfig())
    await batcher.start()
    calls = [batcher.score([t]) for t in TEXTS] + [batcher.score(TEXTS[:3])]
    results = await asyncio.gather(*calls)
    await batcher.stop()
    together = [r[0][0] for r in results[: len(TEXTS)]] + results[-1][0]
    expected = alone + alone[:3]
    for got, want in zip(together, expected, strict=True):
        assert got.windows == want.windows and got.tokens == want.tokens
        for task in engine.manifest.tasks:
            np.testing.assert_allclose(got.scores[task.name], want.scores[task.name], atol=1e-6)
    assert together[2].windows > 1
    assert results[0][1].tokens == alone[0].tokens and results[0][1].inference_ns > 0


async def test_larger_micro_batches_still_route_each_callers_scores(engine):
    alone = [engine.predict([t], batch_size=1)[0] for t in TEXTS]
    tolerance = 1e-4 if engine.manifest.precision == "fp32" else 0.3
    batcher = Batcher(engine, BatchingConfig(micro_batch_size=2, micro_batch_tokens=512))
    await batcher.start()
    results = await asyncio.gather(*[batcher.score([t]) for t in TEXTS])
    await batcher.stop()
    for (got,), want in zip((r[0] for r in results), alone, strict=True):
        assert got.windows == want.windows and got.tokens == want.tokens
        for task in engine.manifest.tasks:
            np.testing.assert_allclose(
                got.scores[task.name], want.scores[task.name], atol=tolerance
            )

