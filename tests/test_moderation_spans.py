"""Evidence spans: Unicode word units and offsets, occlusion selection, budget (fake scorer)."""

from __future__ import annotations

import pytest

from wacht.service.moderation.spans import SpanConfig, byte_offsets, find_spans, word_units


def unit_texts(text: str) -> list[str]:
    return [text[u.begin:u.end] for u in word_units(text)]


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("Hello, world!", ["Hello", "world"]),
        ("don't f*ck   this-up...", ["don't", "f*ck", "this-up"]),
        ("cafe\u0301 na\u0308ive", ["cafe\u0301", "na\u0308ive"]),
        ("\u0301oops", ["\u0301oops"]),  # a stray combining mark stays with what follows
        ("you 👍🏽 idiot😡!", ["you", "👍🏽", "idiot", "😡"]),
        ("👨‍👩‍👧 family 🇩🇪🇫🇷", ["👨‍👩‍👧", "family", "🇩🇪", "🇫🇷"]),
        ("1\ufe0f\u20e3 go", ["1\ufe0f\u20e3", "go"]),
        ("你是笨蛋 ok", ["你", "是", "笨", "蛋", "ok"]),
        ("zero\u200bwidth", ["zero", "width"]),
        ("  ...  ", []),
    ],
)
def test_word_units(text, units):
    assert unit_texts(text) == units


def test_byte_offsets_match_utf8():
    text = "a😀é\u0301中"
    offsets = byte_offsets(text)
    for i in range(len(text) + 1):
        assert offsets[i] == len(text[:i].encode("utf-8"))


def scorer(weights: dict[str, float], calls: list[list[str]]):
    """Category 'c' score: 1 - prod(1 - w) over the weighted words present."""

    async def rescore(texts: list[str]) -> list[dict[str, float]]:
        calls.append(texts)
        out = []
        for text in texts:
            keep = 1.0
            for word, w in weights.items():
                if word in text:
                    keep *= 1.0 - w
            out.append({"c": min(0.999, max(0.001, 1.0 - keep))})
        return out

    return rescore


async def spans_for(text: str, weights: dict[str, float], config: SpanConfig | None = None):
    calls: list[list[str]] = []
    rescore = scorer(weights, calls)
    [base] = await rescore([text])
    calls.clear()
    spans, variants = await find_spans(text, base, rescore, config or SpanConfig())
    return spans, variants, calls


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "🙂🙂 ",
        "👨‍👩‍👧 ",
        "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 ",
        "这是 ",
        "🇩🇪 1\ufe0f\u20e3 ",
    ],
)
async def test_top_span_and_both_offsets_after_unicode_prefix(prefix):
    text = prefix + "well you are a moron, honestly"
    spans, variants, calls = await spans_for(text, {"moron": 0.95})
    top = spans[0]
    assert top.text == "moron" and text[top.begin:top.end] == "moron"
    assert text.encode("utf-8")[top.byte_begin:top.byte_end].decode("utf-8") == "moron"
    assert top.score > 0.5
    assert len(calls) == 1 and variants == len(calls[0]) <= 48


async def test_redundant_words_form_one_phrase():
    spans, _, _ = await spans_for("well you stupid idiot, go away", {"stupid": 0.9, "idiot": 0.9})
    assert spans[0].text == "stupid idiot"


async def test_a_phrase_does_not_grow_by_a_weak_neighbour():
    weights = {"stupid": 0.9, "idiot": 0.9, "honestly": 0.05}
    spans, _, _ = await spans_for("you stupid idiot honestly", weights)
    assert spans[0].text == "stupid idiot"


async def test_weak_secondary_spans_are_dropped():
    spans, _, _ = await spans_for("you moron and the rest", {"moron": 0.9, "rest": 0.02})
    assert [s.text for s in spans] == ["moron"]


async def test_separate_words_are_separate_spans():
    spans, _, _ = await spans_for(
        "moron said the man, then he left the room like a jerk", {"moron": 0.8, "jerk": 0.7}
    )
    assert [s.text for s in spans[:2]] == ["moron", "jerk"]


async def test_no_span_when_nothing_drops():
    spans, variants, _ = await spans_for("perfectly calm words here", {"absent": 0.9})
    assert spans == [] and variants > 0


async def test_long_text_stays_in_budget_and_finds_the_word():
    filler = " ".join(f"word{i}" for i in range(300))
    text = filler[:1200] + " bastard " + filler[1200:]
    spans, variants, calls = await spans_for(text, {"bastard": 0.9})
    assert variants <= 48 and sum(len(c) for c in calls) == variants
    assert len(calls) == 3  # segments, coarse chunks of the best segment, words in the best chunk
    assert max(len(v.split()) for c in calls for v in c) <= 96  # no variant longer than a segment
    assert spans[0].text == "bastard"
    assert text[spans[0].begin:spans[0].end] == "bastard"


@pytest.mark.parametrize(("words", "calls_made"), [(40, 1), (70, 2)])
async def test_budget_is_respected_for_medium_texts(words, calls_made):
    text = " ".join(f"w{i}" for i in range(words)) + " scum"
    spans, variants, calls = await spans_for(text, {"scum": 0.9}, SpanConfig(max_variants=48))
    assert variants <= 48 and spans[0].text == "scum" and len(calls) == calls_made


async def test_very_long_text_keeps_the_bound():
    filler = " ".join(f"w{i}" for i in range(3000))
    text = filler[:9000] + " scumbag " + filler[9000:]
    spans, variants, calls = await spans_for(text, {"scumbag": 0.9})
    assert variants <= 48 and sum(len(c) for c in calls) == variants
    assert spans[0].text == "scumbag"
