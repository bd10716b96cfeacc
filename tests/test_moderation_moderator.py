"""Moderator decisions, overrides, validation and timings, on a fake batcher (pure logic)."""

from __future__ import annotations

import pytest
from moderation_fakes import MANIFEST, THRESHOLDS, FakeBatcher

from wacht.service.moderation.moderator import (
    InvalidArgument,
    ModerateOptions,
    Moderator,
    ThresholdOverride,
)
from wacht.service.moderation.policies import PolicyStore


def make(tmp_path=None, fixed=None, words=None, policies: dict[str, str] | None = None):
    directory = None
    if policies:
        directory = tmp_path
        for name, body in policies.items():
            (tmp_path / f"{name}.yaml").write_text(body)
    store = PolicyStore.load(directory, THRESHOLDS)
    batcher = FakeBatcher(fixed=fixed, words=words)
    return Moderator(batcher, MANIFEST, store), batcher


SITE = "default: true\ncategories:\n  hate: {review: 0.4, block: 0.7}\n"


@pytest.mark.parametrize(
    ("score", "action"),
    [
        (0.39, "allow"),
        (0.3999, "allow"),
        (0.4, "review"),
        (0.4001, "review"),
        (0.6999, "review"),
        (0.7, "block"),
        (0.7001, "block"),
        (1.0, "block"),
    ],
)
async def test_decision_at_and_around_thresholds(tmp_path, score, action):
    moderator, _ = make(tmp_path, fixed={"t": {"hate": score}}, policies={"site": SITE})
    [outcome], _, policy = await moderator.moderate(["t"], ModerateOptions())
    assert policy == "site"
    hate = next(c for c in outcome.categories if c.category == "hate")
    assert (hate.review_threshold, hate.block_threshold) == (0.4, 0.7)
    assert hate.action == action and outcome.decision == action
    assert hate.flagged is (action != "allow") and outcome.flagged is (action != "allow")


async def test_decision_is_most_severe_enabled_category(tmp_path):
    body = "default: true\ncategories:\n  profanity: {enabled: false}\n"
    moderator, _ = make(
        tmp_path,
        fixed={"t": {"offensive": 0.6, "insult": 0.2, "profanity": 0.99}},
        policies={"p": body},
    )
    [outcome], _, _ = await moderator.moderate(["t"], ModerateOptions())
    assert outcome.decision == "review"  # profanity would block, but it is disabled
    assert [c.category for c in outcome.categories] == ["toxicity", "hate", "insult"]
    [outcome], _, _ = await moderator.moderate(
        ["t"], ModerateOptions(overrides={"profanity": ThresholdOverride(enabled=True)})
    )
    assert outcome.decision == "block"
    assert {c.category: c.action for c in outcome.categories}["profanity"] == "block"


async def test_requested_categories_restrict_report_and_decision():
    moderator, _ = make(fixed={"t": {"offensive": 0.9, "insult": 0.55}})
    [outcome], _, _ = await moderator.moderate(["t"], ModerateOptions(categories=("insult",)))
    assert [c.category for c in outcome.categories] == ["insult"]
    assert outcome.decision == "review"


async def test_overrides_change_thresholds_per_request():
    moderator, _ = make(fixed={"t": {"insult": 0.6}})
    [base], _, _ = await moderator.moderate(["t"], ModerateOptions())
    assert base.decision == "review"
    opts = ModerateOptions(overrides={"insult": ThresholdOverride(block=0.6)})
    [outcome], _, _ = await moderator.moderate(["t"], opts)
    insult = next(c for c in outcome.categories if c.category == "insult")
    assert insult.block_threshold == 0.6 and outcome.decision == "block"
    opts = ModerateOptions(overrides={"insult": ThresholdOverride(review=0.61)})
    [outcome], _, _ = await moderator.moderate(["t"], opts)
    assert outcome.decision == "allow"
    opts = ModerateOptions(overrides={"insult": ThresholdOverride(enabled=False)})
    [outcome], _, _ = await moderator.moderate(["t"], opts)
    assert outcome.decision == "allow" and "insult" not in [c.category for c in outcome.categories]


async def test_named_policy_is_used(tmp_path):
    moderator, _ = make(
        tmp_path,
        fixed={"t": {"offensive": 0.35}},
        policies={"site": SITE, "strict": "categories:\n  toxicity: {review: 0.3, block: 0.6}\n"},
    )
    [outcome], _, name = await moderator.moderate(["t"], ModerateOptions(policy="strict"))
    assert name == "strict" and outcome.decision == "review"
    [outcome], _, name = await moderator.moderate(["t"], ModerateOptions())
    assert name == "site" and outcome.decision == "allow"


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        (ModerateOptions(policy="nope"), "policy", "unknown policy 'nope'"),
        (ModerateOptions(categories=("hate", "hat")), "categories[1]", "unknown category"),
        (ModerateOptions(categories=("threat",)), "categories[0]", "not scored by model"),
        (
            ModerateOptions(overrides={"hatred": ThresholdOverride(review=0.2)}),
            "threshold_overrides[hatred]",
            "unknown category",
        ),
        (
            ModerateOptions(overrides={"hate": ThresholdOverride(review=1.2)}),
            "threshold_overrides[hate]",
            "review must be between 0 and 1",
        ),
        (
            ModerateOptions(overrides={"hate": ThresholdOverride(block=-0.1)}),
            "threshold_overrides[hate]",
            "block must be between 0 and 1",
        ),
        (
            ModerateOptions(overrides={"hate": ThresholdOverride(review=float("nan"))}),
            "threshold_overrides[hate]",
            "between 0 and 1",
        ),
        (
            ModerateOptions(overrides={"hate": ThresholdOverride(review=0.8, block=0.7)}),
            "threshold_overrides[hate]",
            "above block threshold",
        ),
        (
            ModerateOptions(overrides={"hate": ThresholdOverride(review=0.9)}),
            "threshold_overrides[hate]",
            "above block threshold",
        ),
    ],
)
async def test_invalid_arguments_name_the_field(options, field, words):
    moderator, batcher = make(fixed={"t": {}})
    with pytest.raises(InvalidArgument) as info:
        await moderator.moderate(["t"], options)
    assert info.value.field == field and words in info.value.description
    assert batcher.calls == []  # validated before any work


async def test_sentiment_raw_scores_and_analysis_switches():
    moderator, _ = make(fixed={"t": {"offensive": 0.8, "hate": 0.1}})
    [outcome], timings, _ = await moderator.moderate(["t"], ModerateOptions(raw_scores=True))
    assert outcome.sentiment_label == "negative"
    assert [label for label, _ in outcome.sentiment_scores] == ["negative", "neutral", "positive"]
    raw = {label: (category, score) for label, category, score in outcome.raw_scores}
    assert raw["offensive"][0] == "toxicity" and raw["offensive"][1] == pytest.approx(0.8)
    assert raw["negative"][0] == ""
    assert (outcome.tokens, outcome.windows) == (1, 1) and timings.inference_ns == 3
    [outcome], _, _ = await moderator.moderate(
        ["t"], ModerateOptions(toxicity=False, sentiment=False)
    )
    assert outcome.categories == [] and outcome.decision == "allow"
    assert outcome.sentiment_label == "" and outcome.raw_scores == []


async def test_many_texts_keep_order_in_one_batcher_call():
    texts = [f"text {i}" for i in range(5)]
    fixed = {t: {"insult": 0.1 * i + 0.05} for i, t in enumerate(texts)}
    moderator, batcher = make(fixed=fixed)
    outcomes, _, _ = await moderator.moderate(texts, ModerateOptions())
    assert [o.decision for o in outcomes] == ["allow"] * 5
    assert [round(o.categories[2].score, 2) for o in outcomes] == [0.05, 0.15, 0.25, 0.35, 0.45]
    assert len(batcher.calls) == 1


async def test_spans_only_when_asked_and_only_for_flagged_texts():
    words = {"idiot": {"offensive": 0.9, "insult": 0.9}}
    moderator, batcher = make(words=words)
    texts = ["you are an idiot", "have a nice day"]
    outcomes, _, _ = await moderator.moderate(texts, ModerateOptions())
    assert len(batcher.calls) == 1 and outcomes[0].spans == []
    outcomes, timings, _ = await moderator.moderate(texts, ModerateOptions(evidence_spans=True))
    assert len(batcher.calls) == 3  # one more call, for the flagged text only
    assert all("nice" not in t for t in batcher.calls[-1])
    assert outcomes[1].spans == []
    top = {s.category: s for s in reversed(outcomes[0].spans)}
    assert top["insult"].text == "idiot" and top["toxicity"].text == "idiot"
    assert timings.span_variants == len(batcher.calls[-1]) > 0
    assert timings.tokens == 4 + 4  # span variants do not count as the call's tokens
