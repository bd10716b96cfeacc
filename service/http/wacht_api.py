"""Wacht's own v1 API as JSON: every RPC at a REST path (and at the Connect-style
`POST /wacht.v1.Service/Method`), bodies in protobuf's canonical JSON mapping, errors in
Google's error JSON with the same BadRequest field violations gRPC returns. The servicers
in service/api do the work; this module only maps JSON and paths.

    POST /wacht/v1/moderate                ModerateRequest  -> ModerateResponse
    POST /wacht/v1/analyze                 AnalyzeRequest   -> AnalyzeResponse
    POST /wacht/v1/explain                 ExplainRequest   -> ExplainResponse, one per line
    GET  /wacht/v1/policies                                 -> ListPoliciesResponse
    GET  /wacht/v1/categories                               -> ListCategoriesResponse
    GET  /wacht/v1/models                                   -> ListModelsResponse
    GET  /wacht/v1/models/{name}                            -> ModelInfo
    GET  /healthz  /readyz                 200 SERVING | 503 NOT_SERVING (?service=NAME)
    GET  /livez                            200 while the process answers
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.message import Message

from wacht.service.api import errors
from wacht.service.api.analysis import AnalysisServicer
from wacht.service.api.calls import REQUEST_ID_KEY, Call, CallRunner
from wacht.service.api.models import ModelsServicer
from wacht.service.api.moderation import ModerationServicer
from wacht.service.http import google_errors
from wacht.service.http.common import (
    Front,
    credentials,
    deadline,
    dumps,
    json_response,
    read_json,
    request_id,
)
from wacht.service.http.jsonproto import parse, to_json
from wacht.v1 import analysis_pb2, models_pb2, moderation_pb2


@dataclass(frozen=True)
class Method:
    name: str  # the RPC, also the metrics/log method ("http.Moderate")
    service: str
    request: type[Message]
    body: Callable[[Any, Call], Any]  # (request message, call) -> response message
    path: str
    verbs: tuple[str, ...]
    needs_models: bool = True


@dataclass(frozen=True)
class Servicers:
    moderation: ModerationServicer
    analysis: AnalysisServicer
    models: ModelsServicer


def methods(s: Servicers) -> list[Method]:
    mod, ana, mdl = s.moderation, s.analysis, s.models
    m, a, d = "wacht.v1.Moderation", "wacht.v1.Analysis", "wacht.v1.Models"
    return [
        Method("Moderate", m, moderation_pb2.ModerateRequest, mod.moderate,
               "/wacht/v1/moderate", ("POST",)),
        Method("ListPolicies", m, moderation_pb2.ListPoliciesRequest, mod.list_policies,
               "/wacht/v1/policies", ("GET", "POST")),
        Method("ListCategories", m, moderation_pb2.ListCategoriesRequest, mod.list_categories,
               "/wacht/v1/categories", ("GET", "POST"), needs_models=False),
        Method("Analyze", a, analysis_pb2.AnalyzeRequest, ana.analyze,
               "/wacht/v1/analyze", ("POST",)),
        Method("ListModels", d, models_pb2.ListModelsRequest, mdl.list_models,
               "/wacht/v1/models", ("GET", "POST")),
        Method("GetModelInfo", d, models_pb2.GetModelInfoRequest, mdl.get_model_info,
               "/wacht/v1/models/{name}", ("GET",)),
    ]


class WachtJson(Front):
    def __init__(self, runner: CallRunner, servicers: Servicers, default_timeout_s: float,
                 health: Callable[[str], bool | None]) -> None:
        super().__init__(runner, default_timeout_s)
        self.servicers = servicers
        self.health = health

    def error_response(self, error: errors.ApiError, rid: str) -> web.Response:
        return google_errors.error_response(error, rid)

    def routes(self, app: web.Application) -> None:
        for method in methods(self.servicers):
            handler = self._handler(method)
            for verb in method.verbs:
                app.router.add_route(verb, method.path, handler)
            app.router.add_post(f"/{method.service}/{method.name}", self._handler(method, True))
        app.router.add_post("/wacht/v1/explain", self.explain)
        app.router.add_post("/wacht.v1.Moderation/Explain", self.explain)
        for path in ("/healthz", "/readyz"):
            app.router.add_get(path, self.healthz)
        app.router.add_get("/livez", self.livez)

    def _handler(self, method: Method, connect: bool = False) -> Any:
        async def handle(request: web.Request) -> web.Response:
            async def body(call: Call) -> Message:
                data = {} if request.method == "GET" else await read_json(request)
                if "name" in request.match_info:
                    if not isinstance(data, dict):
                        data = {}
                    data = {**data, "name": request.match_info["name"]}
                return await method.body(parse(data, method.request), call)

            return await self.run(
                request, f"http.{method.name}", body, lambda r: json_response(to_json(r)),
                method.needs_models,
            )

        return handle

    async def explain(self, request: web.Request) -> web.StreamResponse:
        """Explain's events as JSON lines (application/x-ndjson), each written as it comes.
        An error before the first event is an ordinary error response; after it, the last
        line is `{"error": {...}}`."""
        rid = request_id(request)
        stream = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", REQUEST_ID_KEY: rid}
        )

        async def body(call: Call) -> None:
            message = parse(await read_json(request), moderation_pb2.ExplainRequest)
            async for event in self.servicers.moderation.explain(message)(call):
                if not stream.prepared:
                    await stream.prepare(request)
                await stream.write((dumps(to_json(event)) + "\n").encode())

        try:
            call_deadline = deadline(request, self.default_timeout_s)
            await self.runner.run("http.Explain", rid, call_deadline, body,
                                  metadata=dict(credentials(request)))
        except errors.ApiError as error:
            if not stream.prepared:
                return self.error_response(error, rid)
            line = dumps(google_errors.error_body(error)) + "\n"
            await stream.write(line.encode())
        if not stream.prepared:
            await stream.prepare(request)
        await stream.write_eof()
        return stream

    async def healthz(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        serving = self.health(service)
        if serving is None:
            return json_response({"status": "SERVICE_UNKNOWN"}, 404)
        status = "SERVING" if serving else "NOT_SERVING"
        return json_response({"status": status}, 200 if serving else 503)

    async def livez(self, request: web.Request) -> web.Response:
        return json_response({"status": "ALIVE"})

