"""Moderation on the real default model through the real batcher: spans on constructed examples.

Skipped while models/minilm-moderation/ is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wacht.service.moderation.moderator import ModerateOptions, Moderator
from wacht.service.moderation.policies import PolicyStore, manifest_thresholds

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "minilm-moderation"
pytestmark = pytest.mark.skipif(
    not (MODEL / "model.onnx").is_file(), reason=f"{MODEL} is not built yet"
)

PREFIXES = [
    "",
    "🙂👍🏽 ",
    "👨‍👩‍👧 🇩🇪 ",
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301: ",
    "1\ufe0f\u20e3 e\u0301\u0301\u0301 ",
]
# (text with the offending phrase in [brackets], a category the phrase must drive)
CASES = [
    ("thanks for the update on the project, but [you are a fucking idiot] honestly",),
    ("the weather was nice and then this [stupid bitch] showed up at the party",),
    ("I read the whole article and the author is [a worthless piece of shit] tbh",),
]


@pytest.fixture(scope="module")
def engine():
    from wacht.service.runtime.engine import Engine

    return Engine.load(MODEL, intra_op_threads=1)


@pytest.fixture
async def moderator(engine):
    from wacht.service.batching.batcher import Batcher, BatchingConfig

    batcher = Batcher(engine, BatchingConfig())
    await batcher.start()
    store = PolicyStore.load(REPO / "policies", manifest_thresholds(engine.manifest))
    yield Moderator(batcher, engine.manifest, store)
    await batcher.stop()


def unbracket(text: str) -> tuple[str, int, int]:
    begin = text.index("[")
    end = text.index("]") - 1
    return text.replace("[", "").replace("]", ""), begin, end


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("case", CASES)
async def test_offending_phrase_is_the_top_span(moderator, prefix, case):
    raw, begin, end = unbracket(case[0])
    text = prefix + raw
    begin, end = begin + len(prefix), end + len(prefix)
    options = ModerateOptions(policy="strict", evidence_spans=True)
    [outcome], timings, _ = await moderator.moderate([text], options)
    assert outcome.flagged, [(c.category, c.score) for c in outcome.categories]
    top_category = max((c for c in outcome.categories if c.flagged), key=lambda c: c.score)
    spans = [s for s in outcome.spans if s.category == top_category.category]
    assert spans, outcome.spans
    top = spans[0]
    # The top span lies inside the offending phrase (it may be the phrase or its key words).
    assert begin <= top.begin < top.end <= end, (top, text[begin:end])
    assert text[top.begin:top.end] == top.text
    encoded = text.encode("utf-8")
    assert encoded[top.byte_begin:top.byte_end].decode("utf-8") == top.text
    assert top.score > 0
    assert 0 < timings.span_variants <= 48


async def test_benign_text_gets_no_spans_and_no_extra_forwards(moderator):
    [outcome], timings, _ = await moderator.moderate(
        ["thank you so much for the lovely flowers"], ModerateOptions(evidence_spans=True)
    )
    assert outcome.decision == "allow" and outcome.spans == []
    assert timings.span_variants == 0


async def test_evidence_explanation_quotes_the_span(moderator):
    text = "honestly you are a fucking idiot"
    [outcome], _, _ = await moderator.moderate([text], ModerateOptions(explanation="evidence"))
    explanation = outcome.explanation
    assert explanation is not None and explanation.reasons
    assert explanation.reasons[0].spans
    assert f'"{explanation.reasons[0].spans[0].text}"' in explanation.text
    assert explanation.text.split(":")[0] in ("Blocked", "Sent to review")
