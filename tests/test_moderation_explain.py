"""Explanations: evidence sentence, the generative guard, fallbacks and Explain streaming order."""

from __future__ import annotations

import asyncio
import time

import pytest
from moderation_fakes import MANIFEST, THRESHOLDS, FakeBatcher

from wacht.service.moderation.explain import guard, quotes, split_rewrite
from wacht.service.moderation.moderator import (
    ExplanationOutcome,
    ModerateOptions,
    Moderator,
    TextOutcome,
)
from wacht.service.moderation.policies import PolicyStore

TEXT = "You are a total idiot and everyone knows it"
WORDS = {"idiot": {"offensive": 0.9, "insult": 0.95}}


class QueueFull(Exception):  # same name as the batching layer's, which is what is matched
    retry_after_s = 1.0


class FakeGenerator:
    name = "fake-llm"

    def __init__(self, reply: str = "", error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error
        self.calls: list[list[dict[str, str]]] = []

    async def stream(self, messages, *, max_new_tokens=96, deadline=None):
        self.calls.append(messages)
        if self.error is not None:
            raise self.error
        for word in self.reply.split(" "):
            await asyncio.sleep(0)
            yield word + " "


def moderator(generator=None, fallbacks=None, words=WORDS):
    store = PolicyStore.load(None, THRESHOLDS)
    on_fallback = fallbacks.append if fallbacks is not None else None
    return Moderator(FakeBatcher(words=words), MANIFEST, store, generator, on_fallback=on_fallback)


def test_quotes_finds_all_quote_styles_but_not_apostrophes():
    text = "He said \"one\", 'two', “three”, ‘four’ and «five»; don't it's fine."
    assert sorted(quotes(text)) == ["five", "four", "one", "three", "two"]


@pytest.mark.parametrize(
    ("generated", "verdict"),
    [
        ('The text was blocked as an insult and toxic: it calls someone "a total idiot".', ""),
        ("This is insulting and offensive language.", ""),
        ('It is an insult and toxic, calling the reader "a complete moron".', "guard_quote"),
        ("It was flagged as an insult because of 'stupid fool'. Toxic.", "guard_quote"),
        ("The text is rude and was blocked.", "guard_categories"),  # no insult named
        ("Flagged for toxicity.", "guard_categories"),
        ('Flagged as "insult" and "toxicity" for the words “IDIOT”.', ""),
        ("", "guard_categories"),
        ("An insult and toxic: it was not only a joke but also not only a joke but also not "
         "only a joke but also rude.", "guard_repetition"),
    ],
)
def test_guard(generated, verdict):
    assert guard(generated, TEXT, ["insult", "toxicity"]) == verdict


def test_split_rewrite():
    text, rewrite = split_rewrite("It is an insult.\nRewrite: \"I disagree with you.\"\nmore")
    assert (text, rewrite) == ("It is an insult.", "I disagree with you.")
    assert split_rewrite("No rewrite here.") == ("No rewrite here.", "")


def test_the_echoed_quoting_rule_is_not_part_of_the_explanation():
    echoed = 'Flagged as insult because of "idiot". Quote only the words that appear in the ' \
        "message. It insults the reader."
    assert split_rewrite(echoed) == (
        'Flagged as insult because of "idiot". It insults the reader.', ""
    )


async def test_evidence_level_is_deterministic_with_reasons_and_spans():
    m = moderator()
    opts = ModerateOptions(explanation="evidence")
    [first], timings, _ = await m.moderate([TEXT], opts)
    [second], _, _ = await m.moderate([TEXT], opts)
    explanation = first.explanation
    assert explanation is not None and explanation == second.explanation
    assert explanation.level == "evidence" and not explanation.fallback
    assert [r.category for r in explanation.reasons] == ["insult", "toxicity"]
    insult = explanation.reasons[0]
    assert insult.action == "block" and insult.threshold == pytest.approx(0.75)
    assert insult.spans and insult.spans[0].text == "idiot"
    assert explanation.text.startswith("Blocked: insult scored 0.95")
    assert '"idiot"' in explanation.text
    assert first.spans == []  # spans computed for the reasons, not asked for themselves
    assert timings.explain_ns == 0


async def test_evidence_for_an_allowed_text():
    [outcome], _, _ = await moderator().moderate(["hello"], ModerateOptions(explanation="evidence"))
    assert outcome.explanation is not None and outcome.explanation.reasons == []
    assert outcome.explanation.text.startswith("Allowed: no category reached")


async def test_generative_passes_guard():
    reply = 'This was blocked as an insult and is toxic: it calls the reader "a total idiot".'
    generator = FakeGenerator(reply)
    fallbacks: list[str] = []
    [outcome], timings, _ = await moderator(generator, fallbacks).moderate(
        [TEXT], ModerateOptions(explanation="generative")
    )
    explanation = outcome.explanation
    assert explanation is not None and not explanation.fallback and fallbacks == []
    assert explanation.level == "generative" and explanation.generator == "fake-llm"
    assert explanation.text == reply
    prompt = generator.calls[0][-1]["content"]
    assert "insult" in prompt and "toxicity" in prompt and '"idiot"' in prompt
    assert timings.explain_ns > 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('Blocked as an insult and toxic because it says "you are stupid".', "guard_quote"),
        ("Blocked because it is toxic.", "guard_categories"),
    ],
)
async def test_guard_falls_back_to_evidence_and_counts(reply, reason):
    fallbacks: list[str] = []
    [outcome], _, _ = await moderator(FakeGenerator(reply), fallbacks).moderate(
        [TEXT], ModerateOptions(explanation="generative")
    )
    explanation = outcome.explanation
    assert explanation is not None and explanation.fallback
    assert explanation.fallback_reason == reason and fallbacks == [reason]
    assert explanation.level == "evidence" and explanation.text.startswith("Blocked: insult")
    assert reply not in explanation.text


@pytest.mark.parametrize(
    ("generator", "deadline", "reason"),
    [
        (None, None, "no_generator"),
        (FakeGenerator("An insult, toxic."), 0.05, "deadline"),
        (FakeGenerator(error=QueueFull()), None, "overloaded"),
        (FakeGenerator(error=RuntimeError("boom")), None, "error"),
    ],
)
async def test_fallback_reasons(generator, deadline, reason):
    fallbacks: list[str] = []
    opts = ModerateOptions(
        explanation="generative",
        deadline=None if deadline is None else time.monotonic() + deadline,
    )
    [outcome], _, _ = await moderator(generator, fallbacks).moderate([TEXT], opts)
    assert outcome.explanation is not None and outcome.explanation.fallback_reason == reason
    assert fallbacks == [reason]
    if reason == "deadline":
        assert generator.calls == []  # too little time: the LLM is not even asked


async def test_generative_only_for_flagged_texts():
    generator = FakeGenerator("An insult, toxic.")
    outcomes, _, _ = await moderator(generator).moderate(
        [TEXT, "have a nice day"], ModerateOptions(explanation="generative")
    )
    assert len(generator.calls) == 1
    assert outcomes[1].explanation is not None and not outcomes[1].explanation.fallback
    assert outcomes[1].explanation.level == "evidence"


async def test_rewrite_kept_when_clean_and_dropped_when_flagged():
    reply = "This is an insult and toxic.\nRewrite: I disagree with you."
    opts = ModerateOptions(explanation="generative", suggest_rewrite=True)
    [outcome], _, _ = await moderator(FakeGenerator(reply)).moderate([TEXT], opts)
    assert outcome.explanation.suggested_rewrite == "I disagree with you."
    reply = "This is an insult and toxic.\nRewrite: You are an idiot, politely."
    [outcome], _, _ = await moderator(FakeGenerator(reply)).moderate([TEXT], opts)
    assert outcome.explanation.suggested_rewrite == "" and not outcome.explanation.fallback


async def test_explain_stream_order():
    reply = "Blocked as an insult and toxic."
    events = [
        e async for e in moderator(FakeGenerator(reply)).explain_stream(
            TEXT, ModerateOptions(evidence_spans=True)
        )
    ]
    assert isinstance(events[0], TextOutcome) and events[0].decision == "block"
    assert events[0].spans and events[0].spans[0].text == "idiot"
    deltas = events[1:-1]
    assert deltas and all(isinstance(d, str) for d in deltas)
    assert "".join(deltas).strip() == reply
    final = events[-1]
    assert isinstance(final, ExplanationOutcome) and final.text == reply and not final.fallback


async def test_explain_stream_guard_failure_ends_with_fallback():
    events = [
        e async for e in moderator(FakeGenerator("Looks fine to me.")).explain_stream(
            TEXT, ModerateOptions()
        )
    ]
    assert isinstance(events[0], TextOutcome)
    final = events[-1]
    assert isinstance(final, ExplanationOutcome) and final.fallback
    assert final.fallback_reason == "guard_categories"


async def test_explain_stream_allowed_text_has_no_generation():
    generator = FakeGenerator("x")
    events = [e async for e in moderator(generator).explain_stream("hello", ModerateOptions())]
    assert len(events) == 2 and isinstance(events[1], ExplanationOutcome)
    assert generator.calls == [] and events[1].text.startswith("Allowed")


async def test_evidence_without_toxicity_analysis_says_nothing_was_checked():
    opts = ModerateOptions(explanation="evidence", toxicity=False)
    [outcome], _, _ = await moderator().moderate([TEXT], opts)
    assert outcome.decision == "allow" and outcome.explanation is not None
    assert outcome.explanation.text == "Allowed: no category was checked."


async def test_closing_explain_stream_closes_the_generation():
    closed: list[bool] = []

    class Slow(FakeGenerator):
        async def stream(self, messages, *, max_new_tokens=96, deadline=None):
            try:
                for _ in range(1000):
                    await asyncio.sleep(0)
                    yield "insult "
            finally:
                closed.append(True)

    events = moderator(Slow()).explain_stream(TEXT, ModerateOptions())
    assert isinstance(await anext(events), TextOutcome)
    assert await anext(events) == "insult "
    await events.aclose()
    assert closed == [True]


@pytest.mark.parametrize(
    ("waiting", "seconds_left", "reason"), [(0, 2.0, ""), (3, 2.0, "deadline")]
)
async def test_deadline_estimate_uses_the_queue_measurement_and_backlog(
    waiting, seconds_left, reason
):
    class Measured(FakeGenerator):
        max_concurrent = 1
        active = 0

        def estimate_seconds(self, new_tokens, prompt_tokens=0):
            return 1.0

    generator = Measured("Blocked as an insult and toxic.")
    generator.waiting = waiting
    opts = ModerateOptions(explanation="generative", deadline=time.monotonic() + seconds_left)
    [outcome], _, _ = await moderator(generator).moderate([TEXT], opts)
    assert outcome.explanation.fallback_reason == reason
    assert len(generator.calls) == (0 if reason else 1)


def test_first_sentences_and_completion():
    from wacht.service.moderation.explain import first_sentences, generation_complete

    text = 'It is an insult. It says "idiot." Then it rambles on and on'
    assert first_sentences(text) == 'It is an insult. It says "idiot."'
    assert first_sentences("No end here") == "No end here"
    assert not generation_complete('It is an insult. It says "idiot."', False)
    assert generation_complete('It is an insult. It says "idiot." Then', False)
    assert not generation_complete("It is an insult.\nRewrite: Be nice", True)
    assert generation_complete("It is an insult.\nRewrite: Be nice.\n", True)


async def test_generation_stops_after_two_sentences():
    reply = "Blocked as an insult. It is toxic. " + "More words that nobody reads. " * 50
    generator = FakeGenerator(reply)
    events = [
        e async for e in moderator(generator).explain_stream(TEXT, ModerateOptions())
    ]
    deltas = [e for e in events if isinstance(e, str)]
    assert len(deltas) < 12  # closed early, not 300 deltas
    assert events[-1].text == "Blocked as an insult. It is toxic."


def test_evidence_sentence_in_german_and_english() -> None:
    from wacht.service.moderation.explain import evidence_sentence, wording_for
    from wacht.service.moderation.outcomes import ReasonOutcome, SpanOutcome

    span = SpanOutcome("insult", 8, 13, 8, 13, 0.5, "Idiot")
    reasons = [ReasonOutcome("insult", 0.934, 0.75, "block", [span])]
    german = evidence_sentence("block", reasons, [], "de-AT")
    assert german == ("Blockiert: Beleidigung erreichte 0,93 und damit die Sperrschwelle 0,75, "
                      "ausgelöst durch „Idiot“.")
    english = evidence_sentence("block", reasons, [], "en")
    assert english == ('Blocked: insult scored 0.93, at or above the block threshold 0.75, '
                       'driven by "Idiot".')
    assert wording_for("fr")[0] == "en"  # no French wording yet: English
    assert evidence_sentence("allow", [], [], "de") == "Erlaubt: keine Kategorie wurde geprüft."
