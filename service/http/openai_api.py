"""OpenAI-compatible `POST /v1/moderations`: the request becomes a ModerateRequest run by the
Moderation servicer (same models, policy and limits as gRPC); the answer is OpenAI's shape
with OpenAI's category names, mapped from the canonical taxonomy by OPENAI_CATEGORIES.

`flagged` (per result) is Wacht's policy decision for the text (the active policy's review
threshold, any category), so a text flagged only for profanity is flagged although no OpenAI
category names it. Per category, `categories[name]` is that canonical category's policy flag
and `category_scores[name]` its score; categories the served model cannot score are false/0.
Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from wacht.service.api import errors
from wacht.service.api.calls import REQUEST_ID_KEY, Call, CallRunner
from wacht.service.http.common import (
    Front,
    http_status,
    json_response,
    read_json,
    retry_headers,
    violations,
)
from wacht.service.http.wacht_api import Servicers
from wacht.v1 import common_pb2, moderation_pb2

# OpenAI category -> canonical categories that can stand for it, best first; the first one
# the served model scores is used. Empty: no canonical category (always false / 0).
OPENAI_CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("harassment", "insult"),
    "harassment/threatening": ("threat",),
    "hate": ("hate",),
    "hate/threatening": (),
    "illicit": (),
    "illicit/violent": (),
    "self-harm": ("self_harm",),
    "self-harm/intent": (),
    "self-harm/instructions": (),
    "sexual": ("sexual",),
    "sexual/minors": (),
    "violence": ("violence",),
    "violence/graphic": (),
}
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               403: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_exceeded"}
TEXTS_FIELD = re.compile(r"^texts\[(\d+)\](?:\.text)?")


@dataclass
class OpenAIError(errors.ApiError):
    """An ApiError with OpenAI's `error.code` string (e.g. model_not_found)."""

    openai_code: str = ""


class OpenAIModerations(Front):
    def __init__(self, runner: CallRunner, servicers: Servicers, default_timeout_s: float,
                 models: dict[str, str]) -> None:
        super().__init__(runner, default_timeout_s)
        self.servicers = servicers
        self.models = dict(models)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/moderations", self.moderations)

    def error_response(self, error: errors.ApiError, rid: str) -> web.Response:
        status = http_status(error)
        found = violations(error)
        param = found[0][0] if found else None
        code = None
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            code = "rate_limit_exceeded"
        body = {"error": {
            "message": error.message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param or None,
            "code": (error.openai_code if isinstance(error, OpenAIError) else None) or code,
        }}
        return json_response(body, status, {**retry_headers(error), REQUEST_ID_KEY: rid})

    def _model(self, name: Any) -> str:
        """The served model an OpenAI model name stands for ("" = routing default)."""
        if name is None or name == "":
            return ""
        if not isinstance(name, str):
            raise errors.invalid_argument([("model", "expected a string")])
        if name in self.models:
            return self.models[name]
        if name in self.servicers.moderation.state.models:
            return name
        message = (
            f"The model `{name[:64]}` does not exist; this server maps "
            f"{', '.join(sorted(self.models))} and serves "
            f"{', '.join(sorted(self.servicers.moderation.state.models))}"
        )
        details = errors.invalid_argument([("model", message)]).details
        raise OpenAIError(grpc.StatusCode.NOT_FOUND, message, details, "model_not_found")

    @staticmethod
    def _texts(value: Any) -> tuple[list[str], bool]:
        """(texts, whether `input` was a list)."""
        if isinstance(value, str):
            return [value], False
        if not isinstance(value, list):
            what = "missing" if value is None else "not a string or an array"
            raise errors.invalid_argument([("input", f"{what}; expected a string or an array "
                                                     "of strings or text items")])
        if not value:
            raise errors.invalid_argument([("input", "at least one input is required")])
        texts, bad = [], []
        for i, item in enumerate(value):
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text":
                if isinstance(item.get("text"), str):
                    texts.append(item["text"])
                else:
                    bad.append((f"input[{i}].text", "expected a string"))
            elif isinstance(item, dict) and item.get("type") == "image_url":
                bad.append((f"input[{i}]", "image inputs are not supported; send text"))
            else:
                bad.append((f"input[{i}]", "expected a string or {\"type\": \"text\", ...}"))
        if bad:
            raise errors.invalid_argument(bad)
        return texts, True

    @staticmethod
    def _rename(error: errors.ApiError, listed: bool) -> errors.ApiError:
        """Wacht's field paths (`texts[2].text`) in OpenAI's terms (`input[2]`, `input`)."""
        found = violations(error)
        if not found:
            return error
        renamed = []
        for field, description in found:
            match = TEXTS_FIELD.match(field)
            if match:
                field = f"input[{match.group(1)}]" if listed else "input"
            elif field == "texts":
                field = "input"
            renamed.append((field, description))
        return errors.invalid_argument(renamed)

    async def moderations(self, request: web.Request) -> web.Response:
        state = self.servicers.moderation.state
        requested: list[str] = []

        async def body(call: Call) -> tuple[moderation_pb2.ModerateResponse, dict[str, str]]:
            data = await read_json(request)
            if not isinstance(data, dict):
                raise errors.invalid_argument([("", "expected a JSON object")])
            unknown = sorted(set(data) - {"input", "model"})
            if unknown:
                raise errors.invalid_argument(
                    [(k[:64], "unrecognized request argument") for k in unknown[:5]]
                )
            model = self._model(data.get("model"))
            requested.append(data.get("model") or "")
            texts, listed = self._texts(data.get("input"))
            target = state.target(model)
            sources = {
                name: next((c for c in candidates if c in target.categories), "")
                for name, candidates in OPENAI_CATEGORIES.items()
            }
            message = moderation_pb2.ModerateRequest(
                texts=[common_pb2.TextInput(text=t) for t in texts],
                model=model,
                analyses=[moderation_pb2.ANALYSIS_TOXICITY],
            )
            try:
                return await self.servicers.moderation.moderate(message, call), sources
            except errors.ApiError as error:
                raise self._rename(error, listed) from None

        def render(result: tuple[moderation_pb2.ModerateResponse, dict[str, str]]) -> Any:
            response, sources = result
            name = requested[0] if requested else ""
            served = sorted({r.model.name for r in response.results})
            return json_response({
                "id": f"modr-{response.request_id}",
                "model": name or ",".join(served),
                "results": [_result(r, sources) for r in response.results],
            })

        return await self.run(request, "openai.Moderations", body, render)


def _result(result: moderation_pb2.ModerationResult, sources: dict[str, str]) -> dict:
    by_category = {c.category: c for c in result.categories}
    categories: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for name, source in sources.items():
        found = by_category.get(source) if source else None
        categories[name] = bool(found and found.flagged)
        scores[name] = float(found.score) if found else 0.0
    return {
        "flagged": result.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in sources},
    }
