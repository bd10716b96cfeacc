"""Perspective-compatible `POST /v1alpha1/comments:analyze` (and its discovery document).

The comment becomes a ModerateRequest run by the Moderation servicer; requested attributes
map to canonical categories by PERSPECTIVE_ATTRIBUTES. Scores are the canonical category's
score, `type: PROBABILITY`. `spanScores`: one span over the whole comment, as Perspective
answers by default; with `spanAnnotations: true` one span per sentence, each sentence scored
as a text of the same request (one batch). `begin`/`end` count UTF-16 code units, end
exclusive, as Perspective's reference says. `doNotStore` is accepted (Wacht never stores a
text), `clientToken` echoed, `languages` routes the comment to a model like
ModerateRequest.language; `detectedLanguages` is what the language detector said.
Errors are Google's error JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from wacht.service.api import errors
from wacht.service.api.calls import Call, CallRunner
from wacht.service.http import discovery, google_errors
from wacht.service.http.common import Front, json_response, read_json, violations
from wacht.service.http.wacht_api import Servicers
from wacht.v1 import common_pb2, moderation_pb2

# Perspective attribute -> canonical category. Every production attribute Perspective
# documents for toxicity; the *_EXPERIMENTAL names are accepted as the same attribute.
PERSPECTIVE_ATTRIBUTES: dict[str, str] = {
    "TOXICITY": "toxicity",
    "SEVERE_TOXICITY": "severe_toxicity",
    "IDENTITY_ATTACK": "hate",
    "INSULT": "insult",
    "PROFANITY": "profanity",
    "THREAT": "threat",
    "SEXUALLY_EXPLICIT": "sexual",
}
# Perspective attributes with no canonical category: always the "not supported" 400.
UNMAPPED_ATTRIBUTES = (
    "FLIRTATION", "ATTACK_ON_AUTHOR", "ATTACK_ON_COMMENTER", "INCOHERENT", "INFLAMMATORY",
    "LIKELY_TO_REJECT", "OBSCENE", "SPAM", "UNSUBSTANTIAL",
)
REQUEST_FIELDS = {
    "comment", "context", "requestedAttributes", "languages", "doNotStore", "clientToken",
    "sessionId", "communityId", "spanAnnotations",
}
SCORE_TYPES = ("PROBABILITY",)
MAX_SPANS = 64
SENTENCE = re.compile(r"[^.!?\n。！？]*(?:[.!?。！？]+|\n|$)\s*")
ERROR_TYPE = "type.googleapis.com/google.commentanalyzer.v1alpha1.Error"


def canonical(attribute: str) -> str | None:
    return PERSPECTIVE_ATTRIBUTES.get(attribute.removesuffix("_EXPERIMENTAL"))


def sentences(text: str, limit: int = MAX_SPANS) -> list[tuple[int, int]]:
    """(begin, end) code-point ranges of the sentences of `text`, covering all of it; at
    most `limit` (the rest joins the last)."""
    spans = [(m.start(), m.end()) for m in SENTENCE.finditer(text) if m.end() > m.start()]
    if len(spans) > limit:
        spans = [*spans[: limit - 1], (spans[limit - 1][0], len(text))]
    return spans or [(0, len(text))]


def utf16_offsets(text: str) -> list[int]:
    """UTF-16 code units before each code point of `text` (and after the last)."""
    out = [0]
    for ch in text:
        out.append(out[-1] + (2 if ord(ch) > 0xFFFF else 1))
    return out


@dataclass
class PerspectiveError(errors.ApiError):
    """An ApiError with the commentanalyzer Error detail Perspective adds."""

    error_type: str = ""
    languages: tuple[str, ...] = ()
    attribute: str = ""


@dataclass
class Parsed:
    text: str
    attributes: dict[str, tuple[str, float | None]]  # Perspective name -> (category, threshold)
    languages: list[str]
    spans: bool
    client_token: str | None


class Perspective(Front):
    def __init__(self, runner: CallRunner, servicers: Servicers, default_timeout_s: float
                 ) -> None:
        super().__init__(runner, default_timeout_s)
        self.servicers = servicers

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1alpha1/comments:analyze", self.analyze)
        app.router.add_get("/$discovery/rest", self.discovery)
        app.router.add_get("/discovery/v1/apis/commentanalyzer/v1alpha1/rest", self.discovery)

    def error_response(self, error: errors.ApiError, rid: str) -> web.Response:
        extra = None
        if isinstance(error, PerspectiveError) and error.error_type:
            item: dict[str, Any] = {"@type": ERROR_TYPE, "errorType": error.error_type}
            if error.error_type == "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE":
                item["languageNotSupportedByAttributeError"] = {
                    "requestedLanguages": list(error.languages),
                    "attribute": error.attribute,
                }
            extra = [item]
        return google_errors.error_response(error, rid, extra)

    async def discovery(self, request: web.Request) -> web.Response:
        version = request.query.get("version", "v1alpha1")
        if version != "v1alpha1":
            error = errors.ApiError(grpc.StatusCode.NOT_FOUND, "only v1alpha1 is served")
            return google_errors.error_response(error, "")
        root = f"{request.scheme}://{request.host}/"
        return json_response(discovery.document(root))

    def _parse(self, data: Any) -> Parsed:
        if not isinstance(data, dict):
            raise errors.invalid_argument([("", "expected a JSON object")])
        bad: list[tuple[str, str]] = []
        for key in sorted(set(data) - REQUEST_FIELDS)[:5]:
            bad.append((key[:64], "Invalid JSON payload received. Unknown name: cannot find "
                                  "field."))
        comment = data.get("comment")
        text = ""
        if not isinstance(comment, dict) or not isinstance(comment.get("text"), str):
            bad.append(("comment.text", "Comment must be specified (a string)."))
        else:
            text = comment["text"]
            if comment.get("type", "PLAIN_TEXT") not in ("PLAIN_TEXT", None):
                bad.append(("comment.type", "only PLAIN_TEXT is supported"))
        requested = data.get("requestedAttributes")
        attributes: dict[str, tuple[str, float | None]] = {}
        if not isinstance(requested, dict) or not requested:
            bad.append(("requestedAttributes", "Requested attributes must be specified (an "
                                               "object keyed by attribute name)."))
        else:
            for name, options in requested.items():
                at = f"requestedAttributes.{name[:64]}"
                if options is None:
                    options = {}
                if not isinstance(options, dict):
                    bad.append((at, "expected an object ({} for the defaults)"))
                    continue
                threshold = options.get("scoreThreshold")
                if threshold is not None and (
                    isinstance(threshold, bool) or not isinstance(threshold, int | float)
                    or not 0 <= threshold <= 1
                ):
                    bad.append((f"{at}.scoreThreshold", "expected a number in [0, 1]"))
                    threshold = None
                score_type = options.get("scoreType", "PROBABILITY")
                if score_type not in SCORE_TYPES:
                    bad.append((f"{at}.scoreType", "only PROBABILITY is supported"))
                attributes[name] = (canonical(name) or "", threshold)
        languages = data.get("languages") or []
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            bad.append(("languages", "expected an array of language codes"))
            languages = []
        for key, kind in (("doNotStore", bool), ("spanAnnotations", bool),
                          ("clientToken", str), ("sessionId", str), ("communityId", str)):
            if data.get(key) is not None and not isinstance(data[key], kind):
                bad.append((key, f"expected {'true or false' if kind is bool else 'a string'}"))
        if bad:
            raise errors.invalid_argument(bad)
        token = data.get("clientToken")
        return Parsed(text, attributes, languages, bool(data.get("spanAnnotations")), token)

    def _check_attributes(self, parsed: Parsed, model_categories: tuple[str, ...],
                          languages: list[str]) -> None:
        for name, (category, _) in parsed.attributes.items():
            if category and category in model_categories:
                continue
            known = canonical(name) is not None or name in UNMAPPED_ATTRIBUTES
            shown = name[:64]
            langs = ", ".join(languages) or "und"
            message = (f"Attribute {shown} does not support request languages: {langs}"
                       if known else f"Unknown requested attribute: {shown}")
            bad = errors.invalid_argument([(f"requestedAttributes.{shown}", message)])
            raise PerspectiveError(
                bad.code, message, bad.details,
                error_type="LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE" if known else "",
                languages=tuple(languages), attribute=shown,
            )

    async def analyze(self, request: web.Request) -> web.Response:
        state = self.servicers.moderation.state

        async def body(call: Call) -> dict[str, Any]:
            parsed = self._parse(await read_json(request))
            target = state.target("")
            served_languages = sorted({
                lang for m in target.models for lang in m.manifest.languages
            })
            self._check_attributes(parsed, target.categories, parsed.languages or
                                   served_languages)
            ranges = sentences(parsed.text) if parsed.spans else []
            texts = [parsed.text, *(parsed.text[b:e] for b, e in ranges)]
            message = moderation_pb2.ModerateRequest(
                texts=[common_pb2.TextInput(text=t) for t in texts],
                categories=sorted({c for c, _ in parsed.attributes.values()}),
                analyses=[moderation_pb2.ANALYSIS_TOXICITY],
                language=parsed.languages[0] if parsed.languages else "",
            )
            try:
                response = await self.servicers.moderation.moderate(message, call)
            except errors.ApiError as error:
                raise _rename(error) from None
            return _answer(parsed, response, ranges)

        return await self.run(request, "perspective.Analyze", body, json_response)


def _rename(error: errors.ApiError) -> errors.ApiError:
    """Wacht's field paths in Perspective's terms (`texts[0].text` -> `comment.text`)."""
    found = violations(error)
    if not found:
        return error
    renamed = []
    for field, description in found:
        if field.startswith("texts"):
            field = "comment.text"
        elif field == "language":
            field = "languages[0]"
        renamed.append((field, description))
    return errors.invalid_argument(renamed)


def _score(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "type": "PROBABILITY"}


def _answer(parsed: Parsed, response: moderation_pb2.ModerateResponse,
            ranges: list[tuple[int, int]]) -> dict[str, Any]:
    whole, *parts = response.results
    units = utf16_offsets(parsed.text)
    scores: dict[str, Any] = {}
    for name, (category, threshold) in parsed.attributes.items():
        summary = next((c.score for c in whole.categories if c.category == category), 0.0)
        if threshold is not None and summary < threshold:
            continue
        if ranges:
            spans = []
            for (begin, end), part in zip(ranges, parts, strict=True):
                value = next((c.score for c in part.categories if c.category == category), 0.0)
                if threshold is None or value >= threshold:
                    spans.append({"begin": units[begin], "end": units[end],
                                  "score": _score(value)})
        else:
            spans = [{"begin": 0, "end": units[-1], "score": _score(summary)}]
        scores[name] = {"spanScores": spans, "summaryScore": _score(summary)}
    detected = [whole.language] if whole.language and whole.language != "und" else []
    answer: dict[str, Any] = {
        "attributeScores": scores,
        "languages": parsed.languages or detected,
        "detectedLanguages": detected,
    }
    if parsed.client_token is not None:
        answer["clientToken"] = parsed.client_token
    return answer
