"""The HTTP listener (aiohttp) in the gRPC server's process: one aiohttp application with
Wacht's JSON API, the OpenAI- and Perspective-compatible endpoints, health and the console.
Every call runs through the server's CallRunner, so admission, limits, metrics, models,
batchers and policies are the gRPC ones.

aiohttp's access log is off: it would write query strings (`?key=` API keys). One log line
per request names the route template, never the path or the body."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web

from wacht.service.api import errors
from wacht.service.api.calls import CallRunner
from wacht.service.api.state import ServingState
from wacht.service.http import console, google_errors
from wacht.service.http.common import MAX_BODY_BYTES, request_id
from wacht.service.http.openai_api import OpenAIModerations
from wacht.service.http.perspective import Perspective
from wacht.service.http.wacht_api import Servicers, WachtJson
from wacht.service.observability.logging import get_logger

log = get_logger("wacht.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_name(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    return resource.canonical if resource is not None else "(no route)"


class HttpGateway:
    def __init__(
        self,
        state: ServingState,
        runner: CallRunner,
        servicers: Servicers,
        service_names: list[str],
        max_body_bytes: int,
    ) -> None:
        self.state = state
        self.config = state.config.http
        self.servicers = servicers
        self.service_names = service_names
        timeout = self.config.request_timeout_s
        self.wacht = WachtJson(runner, servicers, timeout, self.serving)
        self.openai = OpenAIModerations(runner, servicers, timeout, self.config.openai_models)
        self.perspective = Perspective(runner, servicers, timeout)
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._guard])
        self.app[MAX_BODY_BYTES] = max_body_bytes
        self.wacht.routes(self.app)
        self.openai.routes(self.app)
        self.perspective.routes(self.app)
        if self.config.console:
            console.routes(self.app)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def serving(self, service: str) -> bool | None:
        """The health state gRPC health reports for `service` (None: no such service)."""
        if service and service not in self.service_names:
            return None
        return self.state.ready and not self.state.draining

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """404/405 and anything unexpected as JSON; the listener never fails a request with
        aiohttp's HTML pages or a dropped connection."""
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            if exc.status == 404:
                error = errors.ApiError(grpc.StatusCode.NOT_FOUND, "no such path")
            elif exc.status == 405:
                error = errors.ApiError(
                    grpc.StatusCode.UNIMPLEMENTED, f"method {request.method} not allowed"
                )
            else:
                raise
            response = google_errors.error_response(error, request_id(request))
            response.set_status(exc.status)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception as exc:
            log.error("http handler failed", route=_route_name(request), exc_info=exc)
            return google_errors.error_response(errors.internal(), request_id(request))
        finally:
            log.debug(
                "http request",
                verb=request.method,
                route=_route_name(request),
                status=status,
                ms=round((time.monotonic() - started) * 1000, 2),
            )

    async def start(self) -> int:
        host, _, port = self.config.address.rpartition(":")
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        reuse = self.state.config.workers > 1  # the workers share the port
        site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_port=reuse)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self.config.address} (http): {exc}") from exc
        self._runner = runner
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        log.info("http listening", address=self.config.address, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

