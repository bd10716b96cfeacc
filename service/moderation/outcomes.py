"""What moderation returns (re-exported by service.moderation.moderator, the facade)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["allow", "review", "block"]
ExplanationLevel = Literal["none", "evidence", "generative"]
SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "block": 2}


@dataclass
class CategoryOutcome:
    category: str
    score: float
    review_threshold: float
    block_threshold: float
    action: Action
    flagged: bool  # score >= review_threshold and the category is enabled


@dataclass
class SpanOutcome:
    category: str
    begin: int  # code points (Python str index), half-open
    end: int
    byte_begin: int  # UTF-8 bytes, half-open
    byte_end: int
    score: float  # drop in the category's score when the span is masked
    text: str


@dataclass
class ReasonOutcome:
    category: str
    score: float
    threshold: float  # the threshold the score reached (block for BLOCK, review for REVIEW)
    action: str
    spans: list[SpanOutcome] = field(default_factory=list)


@dataclass
class ExplanationOutcome:
    level: str  # the level that produced `text`: "evidence" when generative fell back
    text: str
    reasons: list[ReasonOutcome]
    fallback: bool = False
    fallback_reason: str = ""  # guard_categories | guard_quote | guard_repetition |
    #                             no_generator | deadline |
    #                             overloaded | error
    suggested_rewrite: str = ""
    generator: str = ""
    language: str = "en"  # the language `text` is written in


@dataclass
class TextOutcome:
    decision: Action
    flagged: bool
    categories: list[CategoryOutcome]
    sentiment_label: str
    sentiment_scores: list[tuple[str, float]]
    spans: list[SpanOutcome]
    explanation: ExplanationOutcome | None
    raw_scores: list[tuple[str, str, float]]  # (label, category or "", score)
    tokens: int
    windows: int
    model: str = ""  # the model that scored the text
    language: str = ""  # detected or given language ("und": none detected)
    language_confidence: float = 0.0


@dataclass
class ModerationTimings:
    """BatchTimings' fields summed over every batcher call a request made, plus generation."""

    queue_ns: int = 0
    tokenize_ns: int = 0
    inference_ns: int = 0
    tokens: int = 0
    explain_ns: int = 0
    span_variants: int = 0  # extra texts scored for evidence spans

    def add(self, timings: object, *, tokens: bool = True) -> None:
        """Add one batcher call's BatchTimings; `tokens=False` for extra (span) forwards."""
        self.queue_ns += int(getattr(timings, "queue_ns", 0))
        self.tokenize_ns += int(getattr(timings, "tokenize_ns", 0))
        self.inference_ns += int(getattr(timings, "inference_ns", 0))
        if tokens:
            self.tokens += int(getattr(timings, "tokens", 0))

    def merge(self, other: ModerationTimings) -> None:
        """Add another request part's timings (a part scored by another model)."""
        self.add(other)
        self.explain_ns += other.explain_ns
        self.span_variants += other.span_variants
