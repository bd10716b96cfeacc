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



def test_the_window_lower_bound_never_exceeds_the_real_windows(engine):
    """The cost-cap pre-check refuses a call only on a proven lower bound: for every kind
    of text the real tokenizer needs at least that many windows."""
    import base64
    import random

    rng = random.Random(7)
    texts = [
        *TEXTS,
        "Die Sitzung wurde nach einer langen Debatte über Straßenreparaturen vertagt. " * 60,
        "https://example.com/a/very/long/path?with=query&and=more " * 80,
        base64.b64encode(rng.randbytes(30000)).decode(),  # one "word", thousands of tokens
        "数据保护很重要。" * 400,
        "!!! ??? ... ;;; " * 300,
        "😀 " * 2000,
        " ".join(str(rng.randrange(10**6)) for _ in range(5000)),
        "\x00\x01 \u200b " * 1000,
    ]
    multilingual = MODEL_DIR.parent / "use-multilingual-moderation"  # SentencePiece
    engines = [engine] + ([Engine.load(multilingual, intra_op_threads=1)]
                          if (multilingual / "manifest.yaml").is_file() else [])
    for served in engines:
        bounded = Batcher(served, BatchingConfig())
        for max_windows in (1, 4, 16):
            real = [len(e.windows) for e in served.encode(texts, "window", max_windows)]
            bound = [bounded.windows_at_least([t], "window", max_windows) for t in texts]
            assert all(b <= r for b, r in zip(bound, real, strict=True)), (bound, real)
    batcher = Batcher(engine, BatchingConfig())
    # and it is tight enough to matter for ordinary long text: 23 KB of English, 16 windows
    assert batcher.windows_at_least([TEXTS[2] * 15], "window", 16) == 16
