"""Explanations: deterministic EVIDENCE reasons and sentence; GENERATIVE text from an LLM, guarded.

The guard accepts a generated explanation only if it names every flagged category (its name or
a synonym from the taxonomy) and every quoted string in it ("..." '...' “...” ‘...’ «...») occurs
in the input (case-insensitive). Otherwise the EVIDENCE sentence is returned with
``fallback=True`` and the reason.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from wacht.service.moderation.outcomes import (
    CategoryOutcome,
    ExplanationOutcome,
    ReasonOutcome,
    SpanOutcome,
)
from wacht.service.moderation.taxonomy import terms

QUOTE_PATTERNS = (
    re.compile(r'"([^"\n]{1,400})"'),
    re.compile(r"“([^”\n]{1,400})”"),
    re.compile(r"«([^»\n]{1,400})»"),
    re.compile(r"„([^“”\n]{1,400})[“”]"),
    re.compile(r"(?<!\w)'([^'\n]{1,400}?)'(?!\w)"),
    re.compile(r"(?<!\w)‘([^’\n]{1,400}?)’(?!\w)"),
)
QUOTE_EDGES = " \t.,;:!?…-–—"
REWRITE_MARKER = re.compile(r"^\s*(?:suggested\s+)?rewrite\s*:\s*", re.IGNORECASE | re.MULTILINE)
PROMPT_TEXT_CHARS = 600


class TextGenerator(Protocol):
    """What the explainer needs of service.batching.generation.GenerationQueue."""

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 96,
        deadline: float | None = None,
    ) -> AsyncIterator[str]: ...


@dataclass
class GenerationConfig:
    max_new_tokens: int = 96
    rewrite_tokens: int = 64  # extra tokens allowed when a rewrite is asked for
    tokens_per_s: float = 20.0  # starting estimate; replaced by what generation measures
    prefill_s: float = 0.3  # prompt processing, added to the estimate


def _human(category: str) -> str:
    return category.replace("_", " ")


def reasons_for(categories: list[CategoryOutcome], spans: list[SpanOutcome]) -> list[ReasonOutcome]:
    """One reason per flagged category, most severe and highest-scoring first."""
    reasons = []
    for cat in categories:
        if not cat.flagged:
            continue
        threshold = cat.block_threshold if cat.action == "block" else cat.review_threshold
        reasons.append(
            ReasonOutcome(
                category=cat.category,
                score=cat.score,
                threshold=threshold,
                action=cat.action,
                spans=[s for s in spans if s.category == cat.category],
            )
        )
    reasons.sort(key=lambda r: (r.action == "block", r.score), reverse=True)
    return reasons


@dataclass(frozen=True)
class EvidenceWording:
    """The evidence sentence in one language."""

    decisions: dict[str, str]
    categories: dict[str, str]
    nothing_checked: str
    nothing_reached: str  # {category} {score} {threshold}
    reached: str  # {category} {score} {threshold} {level}
    levels: dict[str, str]
    driven_by: str  # {quoted}
    quote: str  # {text}
    decimal: str = "."


WORDINGS = {
    "en": EvidenceWording(
        decisions={"allow": "Allowed", "review": "Sent to review", "block": "Blocked"},
        categories={},
        nothing_checked="no category was checked",
        nothing_reached="no category reached its review threshold (highest: {category} "
        "{score}, review at {threshold})",
        reached="{category} scored {score}, at or above the {level} threshold {threshold}",
        levels={"block": "block", "review": "review"},
        driven_by=", driven by {quoted}",
        quote='"{text}"',
    ),
    "de": EvidenceWording(
        decisions={"allow": "Erlaubt", "review": "Zur Prüfung", "block": "Blockiert"},
        categories={
            "toxicity": "Toxizität", "severe_toxicity": "schwere Toxizität", "hate": "Hassrede",
            "insult": "Beleidigung", "profanity": "Vulgärsprache", "threat": "Drohung",
            "harassment": "Belästigung", "sexual": "sexuelle Inhalte", "violence": "Gewalt",
            "self_harm": "Selbstverletzung",
        },
        nothing_checked="keine Kategorie wurde geprüft",
        nothing_reached="keine Kategorie erreichte ihre Prüfschwelle (höchster Wert: "
        "{category} {score}, Prüfung ab {threshold})",
        reached="{category} erreichte {score} und damit die {level} {threshold}",
        levels={"block": "Sperrschwelle", "review": "Prüfschwelle"},
        driven_by=", ausgelöst durch {quoted}",
        quote="„{text}“",
        decimal=",",
    ),
}


def wording_for(language: str) -> tuple[str, EvidenceWording]:
    """The evidence wording for a text's language (English where there is none yet)."""
    code = (language or "en").lower().split("-")[0]
    return (code, WORDINGS[code]) if code in WORDINGS else ("en", WORDINGS["en"])


def evidence_sentence(
    decision: str, reasons: list[ReasonOutcome], categories: list[CategoryOutcome],
    language: str = "en",
) -> str:
    """One deterministic sentence saying why, in the text's language where we have one."""
    _, w = wording_for(language)

    def name(category: str) -> str:
        return w.categories.get(category, _human(category))

    def number(value: float) -> str:
        return f"{value:.2f}".replace(".", w.decimal)

    head = w.decisions.get(decision, decision.capitalize())
    if not reasons:
        if not categories:
            return f"{head}: {w.nothing_checked}."
        top = max(categories, key=lambda c: c.score)
        return f"{head}: " + w.nothing_reached.format(
            category=name(top.category), score=number(top.score),
            threshold=number(top.review_threshold),
        ) + "."
    parts = []
    for reason in reasons:
        level = w.levels["block" if reason.action == "block" else "review"]
        part = w.reached.format(
            category=name(reason.category), score=number(reason.score), level=level,
            threshold=number(reason.threshold),
        )
        if reason.spans:
            quoted = ", ".join(w.quote.format(text=s.text) for s in reason.spans[:3])
            part += w.driven_by.format(quoted=quoted)
        parts.append(part)
    return f"{head}: " + "; ".join(parts) + "."


def evidence_explanation(
    decision: str,
    reasons: list[ReasonOutcome],
    categories: list[CategoryOutcome],
    *,
    fallback_reason: str = "",
    language: str = "en",
) -> ExplanationOutcome:
    return ExplanationOutcome(
        level="evidence",
        text=evidence_sentence(decision, reasons, categories, language),
        reasons=reasons,
        fallback=bool(fallback_reason),
        fallback_reason=fallback_reason,
        language=wording_for(language)[0],
    )


QUOTE_RULE = "Quote only words that appear in the message."
PROMPT_ECHO = re.compile(
    r"\s*quote only (?:the )?words (?:that )?appear(?:s)? in the message\.?", re.IGNORECASE
)
PROMPT_DECISIONS = {"review": "held for review", "block": "blocked", "allow": "allowed"}


def prompt_messages(
    text: str, decision: str, reasons: list[ReasonOutcome], suggest_rewrite: bool
) -> list[dict[str, str]]:
    """Chat messages asking for a short explanation (and a rewrite) of a moderation decision.

    Worded for small instruct models: the decision is "held for review" (a bare "review" reads
    as a product review) and the answer is asked to start with a sentence that names the
    categories, which is what the guard checks."""
    shown = text if len(text) <= PROMPT_TEXT_CHARS else text[:PROMPT_TEXT_CHARS] + " …"
    names = " and ".join(_human(r.category) for r in reasons)
    phrases = [s.text for r in reasons for s in r.spans[:2]]
    action = PROMPT_DECISIONS.get(decision, decision)
    lines = [f'Message: "{shown}"', f"Flagged as: {names} ({action})"]
    if phrases:
        lines.append("Key words: " + ", ".join(f'"{p}"' for p in dict.fromkeys(phrases)))
    task = (
        f"Explain in one or two short sentences why the message counts as {names}. "
        f'Start with "This message was {action} for {names} because". {QUOTE_RULE}'
    )
    if suggest_rewrite:
        task += " Then write one line that starts with 'Rewrite:' and gives a polite version."
    lines.append(task)
    return [
        {
            "role": "system",
            "content": "You are a content moderator. You explain briefly and factually why a "
            "message was flagged.",
        },
        {"role": "user", "content": "\n".join(lines)},
    ]


SENTENCE_END = re.compile(r"[.!?][\"”’')\]]*(?=\s|$)")
MAX_SENTENCES = 2


def first_sentences(text: str, count: int = MAX_SENTENCES) -> str:
    """The first `count` complete sentences of `text` (all of it if it has fewer ends)."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    if len(ends) >= count:
        return text[: ends[count - 1]].strip()
    return text[: ends[-1]].strip() if ends else text.strip()


def generation_complete(generated: str, want_rewrite: bool) -> bool:
    """Whether the generated text already holds all we use, so generation can stop early."""
    match = REWRITE_MARKER.search(generated)
    if want_rewrite:
        return match is not None and "\n" in generated[match.end():].strip(" ")
    head = generated[: match.start()] if match else generated
    # A sentence end is final once something follows it (the next delta may extend "..." etc.).
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    return match is not None or (len(ends) >= MAX_SENTENCES and ends[MAX_SENTENCES - 1] < len(head))


def without_prompt_echo(text: str) -> str:
    """`text` less the prompt's quoting rule, which small models tend to repeat verbatim."""
    return PROMPT_ECHO.sub("", text).strip()


def split_rewrite(generated: str) -> tuple[str, str]:
    """(explanation, rewrite) from generated text; the rewrite follows a 'Rewrite:' line."""
    match = REWRITE_MARKER.search(generated)
    if not match:
        return first_sentences(without_prompt_echo(generated)), ""
    rewrite = generated[match.end():].strip().splitlines()
    explanation = first_sentences(without_prompt_echo(generated[: match.start()]))
    return explanation, (rewrite[0].strip().strip('"“”') if rewrite else "")


def quotes(text: str) -> list[str]:
    """Every quoted string in `text`."""
    found = []
    for pattern in QUOTE_PATTERNS:
        found.extend(m.group(1) for m in pattern.finditer(text))
    return found


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def names_category(text: str, category: str) -> bool:
    lowered = text.casefold()
    return any(
        re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", lowered) for term in terms(category)
    ) or any(term in lowered for term in terms(category) if " " in term)


def repetitive(text: str, n: int = 4, limit: int = 3) -> bool:
    """Whether some run of `n` words occurs `limit` times or more (a looping small model)."""
    words = re.findall(r"\w+", text.casefold())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return any(count >= limit for count in Counter(grams).values())


def guard(generated: str, source: str, categories: list[str]) -> str:
    """'' if `generated` may be shown; else why not: 'guard_categories' (a flagged category is
    not named), 'guard_quote' (a quote is not in the input) or 'guard_repetition' (it loops)."""
    if not generated.strip():
        return "guard_categories" if categories else ""
    missing = [c for c in categories if not names_category(generated, c)]
    if missing:
        return "guard_categories"
    if repetitive(generated):
        return "guard_repetition"
    allowed_labels = {t for c in categories for t in terms(c)}
    haystack = _norm(source)
    for quoted in quotes(generated):
        needle = _norm(quoted.strip(QUOTE_EDGES))
        if not needle or needle in allowed_labels:
            continue
        if needle not in haystack:
            return "guard_quote"
    return ""


def writes_language(explainer: Any, language: str) -> bool:
    """Whether the explainer writes the text's language (an undetermined one counts as yes:
    the explanation is then in the explainer's first language)."""
    if not language or language == "und":
        return True
    languages = getattr(explainer, "languages", None) or ("en",)
    return language.lower().split("-")[0] in languages


def generator_name(explainer: Any) -> str:
    for owner in (explainer, getattr(explainer, "generator", None)):
        name = getattr(owner, "name", None)
        if isinstance(name, str) and name:
            return name
    return ""


class SpeedEstimate:
    """Generation speed, measured as it runs, to judge whether a deadline leaves enough time."""

    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        self.tokens_per_s = config.tokens_per_s

    def seconds_for(self, max_new_tokens: int) -> float:
        return self.config.prefill_s + max_new_tokens / max(self.tokens_per_s, 1e-3)

    def enough_time(
        self, deadline: float | None, max_new_tokens: int, queue: Any = None,
        prompt_tokens: int = 0,
    ) -> bool:
        """Whether a generation is likely to finish before `deadline`. Uses the queue's own
        measurement (GenerationQueue.estimate_seconds) when it has one, and counts the jobs
        already waiting for it."""
        if deadline is None:
            return True
        needed = None
        estimate = getattr(queue, "estimate_seconds", None)
        if callable(estimate):
            needed = estimate(max_new_tokens, prompt_tokens)
        if needed is None:
            needed = self.seconds_for(max_new_tokens)
        ahead = getattr(queue, "waiting", 0) + getattr(queue, "active", 0)
        slots = max(1, getattr(queue, "max_concurrent", 1))
        if isinstance(ahead, int) and ahead > 0:
            needed *= 1 + ahead / slots
        return deadline - time.monotonic() >= needed

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens < 8 or seconds <= 0:
            return
        measured = tokens / seconds
        self.tokens_per_s = 0.7 * self.tokens_per_s + 0.3 * measured
