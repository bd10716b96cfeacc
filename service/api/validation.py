"""Request checks that name the offending field (`texts[3].text`), collected into one error."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wacht.service.api import errors
from wacht.service.config import LimitsConfig
from wacht.service.moderation.moderator import ModerateOptions, ThresholdOverride
from wacht.service.moderation.taxonomy import CATEGORIES
from wacht.service.observability.redact import path_key, shown
from wacht.v1 import common_pb2, moderation_pb2

TRUNCATIONS = {
    common_pb2.TRUNCATION_UNSPECIFIED: "window",
    common_pb2.TRUNCATION_SLIDING_WINDOW: "window",
    common_pb2.TRUNCATION_HEAD: "head",
    common_pb2.TRUNCATION_REJECT: "reject",
}
EXPLANATIONS = {
    moderation_pb2.EXPLANATION_LEVEL_UNSPECIFIED: "none",
    moderation_pb2.EXPLANATION_LEVEL_NONE: "none",
    moderation_pb2.EXPLANATION_LEVEL_EVIDENCE: "evidence",
    moderation_pb2.EXPLANATION_LEVEL_GENERATIVE: "generative",
}


class Violations:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((self.prefix + field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise errors.invalid_argument(self.items)


def check_texts(
    texts: Sequence[common_pb2.TextInput],
    limits: LimitsConfig,
    v: Violations,
    field: str = "texts",
    single: bool = False,
) -> tuple[list[str], list[str]]:
    """Ids and texts of a request. An empty id becomes the text's index ("0", "1", ...).
    `single`: `field` is one TextInput (Explain), so paths read `text.text`, not `texts[0].text`."""
    if not texts:
        v.add(field, "at least one text is required")
        return [], []
    if len(texts) > limits.max_texts_per_request:
        v.add(field, f"{len(texts)} texts; at most {limits.max_texts_per_request} per request")
        return [], []
    ids: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(texts):
        text_id = item.id or str(i)
        if text_id in seen:
            first = f"{field}[{seen[text_id]}]"
            v.add(f"{field}[{i}].id", f"duplicate id {shown(text_id)} (also {first})")
        seen.setdefault(text_id, i)
        ids.append(text_id)
        size = len(item.text.encode("utf-8", "surrogatepass"))
        if size > limits.max_text_bytes:
            at = f"{field}.text" if single else f"{field}[{i}].text"
            v.add(at, f"{size} bytes; at most {limits.max_text_bytes} UTF-8 bytes")
    return ids, [item.text for item in texts]


LANGUAGE_CODE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def check_language(value: str, v: Violations, field: str = "language") -> str:
    """'' (detect per text) or a language code such as "de" / "de-AT", lower-cased."""
    if not value:
        return ""
    if len(value) > 35 or not LANGUAGE_CODE.fullmatch(value):
        v.add(field, "not a language code (expected ISO 639-1, e.g. 'de', or a BCP-47 tag)")
        return ""
    return value.lower().replace("_", "-")


def check_truncation(value: int, v: Violations, field: str = "truncation") -> str:
    if value not in TRUNCATIONS:
        v.add(field, f"unknown Truncation value {value}")
        return "window"
    return TRUNCATIONS[value]


def check_categories(
    names: Iterable[str], model_categories: Sequence[str], v: Violations, field: str
) -> tuple[str, ...]:
    out = []
    for i, name in enumerate(names):
        if name not in CATEGORIES:
            v.add(
                f"{field}[{i}]", f"unknown category {shown(name)}; known: {', '.join(CATEGORIES)}"
            )
        elif name not in model_categories:
            v.add(
                f"{field}[{i}]",
                f"category {shown(name)} is not scored by this model "
                f"(it scores {', '.join(model_categories)})",
            )
        else:
            out.append(name)
    return tuple(out)


def check_overrides(
    overrides: Mapping[str, moderation_pb2.ThresholdOverride],
    model_categories: Sequence[str],
    v: Violations,
    field: str = "threshold_overrides",
) -> dict[str, ThresholdOverride]:
    out: dict[str, ThresholdOverride] = {}
    for name in sorted(overrides):
        item = overrides[name]
        at = f"{field}[{path_key(name)}]"
        if name not in CATEGORIES:
            v.add(at, f"unknown category {shown(name)}; known: {', '.join(CATEGORIES)}")
            continue
        if name not in model_categories:
            v.add(at, f"category {shown(name)} is not scored by this model")
            continue
        review = item.review if item.HasField("review") else None
        block = item.block if item.HasField("block") else None
        enabled = item.enabled if item.HasField("enabled") else None
        bad = False
        for key, value in (("review", review), ("block", block)):
            if value is not None and not 0.0 <= value <= 1.0:
                v.add(f"{at}.{key}", f"{value:.4g} is outside [0, 1]")
                bad = True
        if not bad and review is not None and block is not None and review > block:
            v.add(
                f"{at}.review",
                f"review threshold {review:.4g} is above block threshold {block:.4g}",
            )
        out[name] = ThresholdOverride(review=review, block=block, enabled=enabled)
    return out


def check_policy(name: str, policies: Any, v: Violations, field: str = "policy") -> str:
    if not name:
        return ""
    try:
        policies.get(name)
    except KeyError:
        v.add(field, f"unknown policy {shown(name)}; loaded: {', '.join(policies.names())}")
    return name


def moderate_options(
    request: moderation_pb2.ModerateRequest,
    model_categories: Sequence[str],
    policies: Any,
    v: Violations,
    deadline: float | None,
    caller: str = "",
) -> ModerateOptions:
    toxicity = sentiment = not request.analyses
    for i, kind in enumerate(request.analyses):
        if kind == moderation_pb2.ANALYSIS_TOXICITY:
            toxicity = True
        elif kind == moderation_pb2.ANALYSIS_SENTIMENT:
            sentiment = True
        else:
            v.add(f"analyses[{i}]", f"unknown or unspecified AnalysisKind value {kind}")
    if request.explanation not in EXPLANATIONS:
        v.add("explanation", f"unknown ExplanationLevel value {request.explanation}")
    explanation = EXPLANATIONS.get(request.explanation, "none")
    if request.suggest_rewrite and explanation != "generative":
        v.add("suggest_rewrite", "needs explanation = EXPLANATION_LEVEL_GENERATIVE")
    return ModerateOptions(
        categories=check_categories(request.categories, model_categories, v, "categories"),
        policy=check_policy(request.policy, policies, v),
        overrides=check_overrides(request.threshold_overrides, model_categories, v),
        explanation=explanation,  # type: ignore[arg-type]
        evidence_spans=request.evidence_spans,
        suggest_rewrite=request.suggest_rewrite,
        toxicity=toxicity,
        sentiment=sentiment,
        raw_scores=request.raw_scores,
        truncation=check_truncation(request.truncation, v),  # type: ignore[arg-type]
        deadline=deadline,
        caller=caller,
    )
