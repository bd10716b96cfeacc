"""The moderation facade the API servicers call: scores -> policy decisions, spans, explanations."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import structlog

from wacht.service.moderation.explain import (
    GenerationConfig,
    SpeedEstimate,
    TextGenerator,
    evidence_explanation,
    generation_complete,
    generator_name,
    guard,
    prompt_messages,
    reasons_for,
    split_rewrite,
    writes_language,
)
from wacht.service.moderation.outcomes import (
    SEVERITY,
    Action,
    CategoryOutcome,
    ExplanationLevel,
    ExplanationOutcome,
    ModerationTimings,
    ReasonOutcome,
    SpanOutcome,
    TextOutcome,
)
from wacht.service.moderation.policies import CategoryRule, Policy, PolicyStore, default_block
from wacht.service.moderation.spans import SpanConfig, find_spans
from wacht.service.moderation.taxonomy import CATEGORIES
from wacht.service.observability.redact import path_key, shown

if TYPE_CHECKING:
    from wacht.service.runtime.model_dir import Manifest

__all__ = [
    "CategoryOutcome",
    "ExplanationOutcome",
    "InvalidArgument",
    "ModerateOptions",
    "ModerationTimings",
    "Moderator",
    "ReasonOutcome",
    "SpanOutcome",
    "TextOutcome",
    "ThresholdOverride",
]

log = structlog.get_logger(__name__)

Truncation = Literal["window", "head", "reject"]
SENTIMENT_TASK = "sentiment"


class InvalidArgument(ValueError):
    """A request field is wrong; the API layer turns it into a google.rpc.BadRequest violation."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass
class ThresholdOverride:
    review: float | None = None
    block: float | None = None
    enabled: bool | None = None


@dataclass
class ModerateOptions:
    categories: tuple[str, ...] = ()
    policy: str = ""
    overrides: dict[str, ThresholdOverride] = field(default_factory=dict)
    explanation: ExplanationLevel = "none"
    evidence_spans: bool = False
    suggest_rewrite: bool = False
    toxicity: bool = True
    sentiment: bool = True
    raw_scores: bool = False
    truncation: Truncation = "window"
    deadline: float | None = None  # time.monotonic() based
    # Fair-queueing key in the batcher: "" = each call its own flow; the same key (an
    # authenticated caller, once there are API keys) = one flow shared by its calls.
    caller: str = ""


@dataclass(frozen=True)
class _Plan:
    policy: Policy
    rules: dict[str, CategoryRule]  # effective rule of every reported category
    reported: tuple[str, ...]


def _action(score: float, rule: CategoryRule) -> Action:
    if not rule.enabled:
        return "allow"
    if score >= rule.block:
        return "block"
    if score >= rule.review:
        return "review"
    return "allow"


def _is(exc: BaseException, *names: str) -> bool:
    return any(type(exc).__name__ == name for name in names)


class Moderator:
    def __init__(
        self,
        batcher: Any,
        manifest: Manifest,
        policies: PolicyStore,
        explainer: TextGenerator | None = None,
        *,
        on_fallback: Callable[[str], None] | None = None,
        spans: SpanConfig | None = None,
        generation: GenerationConfig | None = None,
        max_windows: int = 16,
    ) -> None:
        self.batcher = batcher
        self.max_windows = max_windows  # per text; beyond it the text's tail is not scored
        self.manifest = manifest
        self.policies = policies
        self.explainer = explainer
        self.on_fallback = on_fallback
        self.span_config = spans or SpanConfig()
        self.generation = generation or GenerationConfig()
        self.speed = SpeedEstimate(self.generation)
        # Moderation categories: sigmoid tasks whose labels name a canonical category.
        self._category_labels: dict[str, list[tuple[str, int]]] = {}
        for task in manifest.tasks:
            if task.activation != "sigmoid":
                continue
            for index, label in enumerate(task.labels):
                if label.category:
                    self._category_labels.setdefault(label.category, []).append((task.name, index))
        self.categories: tuple[str, ...] = tuple(self._category_labels)
        self._sentiment = next((t for t in manifest.tasks if t.name == SENTIMENT_TASK), None)

    # -- validation ------------------------------------------------------------------------

    def resolve(self, options: ModerateOptions) -> _Plan:
        """Check the request's policy, categories and overrides; raise InvalidArgument."""
        try:
            policy = self.policies.get(options.policy)
        except KeyError:
            raise InvalidArgument(
                "policy",
                f"unknown policy {shown(options.policy)} "
                f"(loaded: {', '.join(self.policies.names())})",
            ) from None
        requested: list[str] = []
        for i, category in enumerate(options.categories):
            self._check_category(f"categories[{i}]", category)
            if category not in requested:
                requested.append(category)
        rules = {c: self._base_rule(policy, c) for c in self.categories}
        for category, override in options.overrides.items():
            where = f"threshold_overrides[{path_key(category)}]"
            self._check_category(where, category)
            rules[category] = self._apply(where, policy, rules[category], override)
        if requested:
            reported = tuple(c for c in self.categories if c in requested)
        else:
            reported = tuple(c for c in self.categories if rules[c].enabled)
        return _Plan(policy=policy, rules={c: rules[c] for c in reported}, reported=reported)

    def _check_category(self, where: str, category: str) -> None:
        if category not in CATEGORIES:
            raise InvalidArgument(
                where, f"unknown category {shown(category)} (known: {', '.join(CATEGORIES)})"
            )
        if category not in self._category_labels:
            raise InvalidArgument(
                where,
                f"category {shown(category)} is not scored by model '{self.manifest.name}' "
                f"(it scores: {', '.join(self.categories)})",
            )

    def _base_rule(self, policy: Policy, category: str) -> CategoryRule:
        rule = policy.rules.get(category)
        if rule is not None:
            return rule
        thresholds = [
            self.manifest.task(task).labels[index].threshold
            for task, index in self._category_labels[category]
        ]
        review = min(thresholds)
        return CategoryRule(enabled=True, review=review, block=default_block(review))

    @staticmethod
    def _apply(
        where: str, policy: Policy, rule: CategoryRule, override: ThresholdOverride
    ) -> CategoryRule:
        for key in ("review", "block"):
            value = getattr(override, key)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or math.isnan(value)
                or not 0.0 <= value <= 1.0
            ):
                raise InvalidArgument(where, f"{key} must be between 0 and 1, got {value!r}")
        review = rule.review if override.review is None else float(override.review)
        block = rule.block if override.block is None else float(override.block)
        if review > block:
            given = " and ".join(
                f"{k} {getattr(override, k)}" for k in ("review", "block")
                if getattr(override, k) is not None
            )
            raise InvalidArgument(
                where,
                f"review threshold {review:g} is above block threshold {block:g} "
                f"({given} given; policy '{policy.name}' has review {rule.review:g}, "
                f"block {rule.block:g})",
            )
        enabled = rule.enabled if override.enabled is None else bool(override.enabled)
        return CategoryRule(enabled=enabled, review=review, block=block)

    # -- moderation ------------------------------------------------------------------------

    async def score(
        self, texts: Sequence[str], *, truncation: Truncation = "window",
        deadline: float | None = None, caller: str = "",
    ) -> tuple[list[Any], Any]:
        """Raw per-task scores through this model's batcher (TextScores, BatchTimings)."""
        return await self.batcher.score(
            list(texts), truncation=truncation, deadline=deadline, max_windows=self.max_windows,
            caller=caller,
        )

    async def moderate(
        self, texts: Sequence[str], options: ModerateOptions,
        languages: Sequence[str] | None = None,
    ) -> tuple[list[TextOutcome], ModerationTimings, str]:
        """Outcomes in input order, timings summed over every batcher call, the policy used.
        `languages`: each text's language (explanations are written in it where possible)."""
        plan = self.resolve(options)
        timings = ModerationTimings()
        if not texts:
            return [], timings, plan.policy.name
        scores, batch_timings = await self.score(
            texts, truncation=options.truncation, deadline=options.deadline,
            caller=options.caller,
        )
        timings.add(batch_timings)
        outcomes = [self._outcome(s, plan, options) for s in scores]
        for outcome, language in zip(outcomes, languages or [""] * len(outcomes), strict=True):
            outcome.language = language
        if options.evidence_spans or options.explanation != "none":
            found = await asyncio.gather(
                *(self._spans(text, o, options, timings) for text, o in zip(texts, outcomes,
                                                                             strict=True))
            )
        else:
            found = [[] for _ in outcomes]
        if options.explanation != "none":
            explanations = await asyncio.gather(
                *(
                    self._explanation(text, outcome, spans, plan, options, timings)
                    for text, outcome, spans in zip(texts, outcomes, found, strict=True)
                )
            )
            for outcome, explanation in zip(outcomes, explanations, strict=True):
                outcome.explanation = explanation
        if options.evidence_spans:
            for outcome, spans in zip(outcomes, found, strict=True):
                outcome.spans = spans
        return outcomes, timings, plan.policy.name

    async def explain_stream(
        self, text: str, options: ModerateOptions, language: str = ""
    ) -> AsyncIterator[TextOutcome | str | ExplanationOutcome]:
        """The TextOutcome, then generated text deltas, then the guarded ExplanationOutcome."""
        options = replace(options, explanation="generative", toxicity=True)
        plan = self.resolve(options)
        timings = ModerationTimings()
        scores, batch_timings = await self.score(
            [text], truncation=options.truncation, deadline=options.deadline,
            caller=options.caller,
        )
        timings.add(batch_timings)
        outcome = self._outcome(scores[0], plan, options)
        outcome.language = language
        spans = await self._spans(text, outcome, options, timings)
        if options.evidence_spans:
            outcome.spans = spans
        yield outcome
        reasons = reasons_for(outcome.categories, spans)
        if not outcome.flagged:
            yield evidence_explanation(
                outcome.decision, reasons, outcome.categories, language=outcome.language
            )
            return
        events = self._generate(text, outcome, reasons, plan, options, timings)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    def _category_scores(self, text_scores: Any) -> dict[str, float]:
        return {
            category: max(float(text_scores.scores[task][index]) for task, index in labels)
            for category, labels in self._category_labels.items()
        }

    def _outcome(self, text_scores: Any, plan: _Plan, options: ModerateOptions) -> TextOutcome:
        categories: list[CategoryOutcome] = []
        if options.toxicity:
            scores = self._category_scores(text_scores)
            for category in plan.reported:
                rule = plan.rules[category]
                score = scores[category]
                action = _action(score, rule)
                categories.append(
                    CategoryOutcome(
                        category=category,
                        score=score,
                        review_threshold=rule.review,
                        block_threshold=rule.block,
                        action=action,
                        flagged=rule.enabled and score >= rule.review,
                    )
                )
        decision: Action = max(
            (c.action for c in categories), key=SEVERITY.__getitem__, default="allow"
        )
        sentiment_label = ""
        sentiment_scores: list[tuple[str, float]] = []
        if options.sentiment and self._sentiment is not None:
            probs = text_scores.scores[self._sentiment.name]
            sentiment_scores = [
                (label.name, float(p)) for label, p in zip(self._sentiment.labels, probs,
                                                           strict=True)
            ]
            sentiment_label = max(sentiment_scores, key=lambda item: item[1])[0]
        raw: list[tuple[str, str, float]] = []
        if options.raw_scores:
            for task in self.manifest.tasks:
                values = text_scores.scores.get(task.name)
                if values is None:
                    continue
                raw.extend(
                    (label.name, label.category or "", float(v))
                    for label, v in zip(task.labels, values, strict=True)
                )
        return TextOutcome(
            model=self.manifest.name,
            decision=decision,
            flagged=decision != "allow",
            categories=categories,
            sentiment_label=sentiment_label,
            sentiment_scores=sentiment_scores,
            spans=[],
            explanation=None,
            raw_scores=raw,
            tokens=int(text_scores.tokens),
            windows=int(text_scores.windows),
        )

    async def _spans(
        self, text: str, outcome: TextOutcome, options: ModerateOptions,
        timings: ModerationTimings,
    ) -> list[SpanOutcome]:
        flagged = sorted((c for c in outcome.categories if c.flagged), key=lambda c: -c.score)
        if not flagged:
            return []
        truncation: Truncation = "window" if options.truncation == "reject" else options.truncation

        async def rescore(variants: list[str]) -> list[dict[str, float]]:
            scores, batch_timings = await self.score(
                variants, truncation=truncation, deadline=options.deadline,
                caller=options.caller,
            )
            timings.add(batch_timings, tokens=False)
            timings.span_variants += len(variants)
            return [self._category_scores(s) for s in scores]

        spans, _ = await find_spans(
            text, {c.category: c.score for c in flagged}, rescore, self.span_config
        )
        return spans

    # -- explanations ----------------------------------------------------------------------

    async def _explanation(
        self, text: str, outcome: TextOutcome, spans: list[SpanOutcome], plan: _Plan,
        options: ModerateOptions, timings: ModerationTimings,
    ) -> ExplanationOutcome:
        reasons = reasons_for(outcome.categories, spans)
        if options.explanation != "generative" or not outcome.flagged:
            return evidence_explanation(
                outcome.decision, reasons, outcome.categories, language=outcome.language
            )
        final: ExplanationOutcome | None = None
        async for event in self._generate(text, outcome, reasons, plan, options, timings):
            if isinstance(event, ExplanationOutcome):
                final = event
        assert final is not None
        return final

    def _fallback(
        self, reason: str, outcome: TextOutcome, reasons: list[ReasonOutcome]
    ) -> ExplanationOutcome:
        if self.on_fallback is not None:
            try:
                self.on_fallback(reason)
            except Exception:
                log.exception("fallback_counter_failed", reason=reason)
        return evidence_explanation(
            outcome.decision, reasons, outcome.categories, fallback_reason=reason,
            language=outcome.language,
        )

    async def _generate(
        self, text: str, outcome: TextOutcome, reasons: list[ReasonOutcome], plan: _Plan,
        options: ModerateOptions, timings: ModerationTimings,
    ) -> AsyncIterator[str | ExplanationOutcome]:
        if self.explainer is None:
            yield self._fallback("no_generator", outcome, reasons)
            return
        if not writes_language(self.explainer, outcome.language):
            yield self._fallback("language", outcome, reasons)
            return
        max_new = self.generation.max_new_tokens + (
            self.generation.rewrite_tokens if options.suggest_rewrite else 0
        )
        messages = prompt_messages(text, outcome.decision, reasons, options.suggest_rewrite)
        prompt_tokens = sum(len(m["content"]) for m in messages) // 4
        if not self.speed.enough_time(options.deadline, max_new, self.explainer, prompt_tokens):
            yield self._fallback("deadline", outcome, reasons)
            return
        pieces: list[str] = []
        failure = ""
        start = time.monotonic()
        stream = self.explainer.stream(messages, max_new_tokens=max_new, deadline=options.deadline)
        try:
            # Closing the stream when our consumer goes away stops the generation at once.
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    pieces.append(delta)
                    yield delta
                    if generation_complete("".join(pieces), options.suggest_rewrite):
                        break  # leaving the block closes the stream: generation stops
        except Exception as exc:
            if _is(exc, "QueueFull"):
                failure = "overloaded"
            elif _is(exc, "DeadlineExceeded", "TimeoutError"):
                failure = "deadline"
            else:
                failure = "error"
                log.warning("generation_failed", error=type(exc).__name__)
        elapsed = time.monotonic() - start
        timings.explain_ns += int(elapsed * 1e9)
        if not failure:
            self.speed.observe(len(pieces), elapsed)
            if options.deadline is not None and time.monotonic() >= options.deadline:
                failure = "deadline"
        if failure:
            yield self._fallback(failure, outcome, reasons)
            return
        explanation, rewrite = split_rewrite("".join(pieces))
        verdict = guard(explanation, text, [r.category for r in reasons])
        if verdict:
            yield self._fallback(verdict, outcome, reasons)
            return
        if rewrite and options.suggest_rewrite:
            rewrite = await self._clean_rewrite(rewrite, plan, options, timings)
        yield ExplanationOutcome(
            level="generative",
            text=explanation,
            reasons=reasons,
            suggested_rewrite=rewrite if options.suggest_rewrite else "",
            generator=generator_name(self.explainer),
            language=outcome.language if outcome.language not in ("", "und") else "en",
        )

    async def _clean_rewrite(
        self, rewrite: str, plan: _Plan, options: ModerateOptions, timings: ModerationTimings
    ) -> str:
        """The rewrite if it passes the same policy; '' if it would itself be flagged."""
        try:
            scores, batch_timings = await self.score(
                [rewrite], truncation="window", deadline=options.deadline,
                caller=options.caller,
            )
        except Exception as exc:
            log.warning("rewrite_check_failed", error=type(exc).__name__)
            return ""
        timings.add(batch_timings, tokens=False)
        checked = self._outcome(scores[0], plan, replace(options, sentiment=False))
        return "" if checked.flagged else rewrite
