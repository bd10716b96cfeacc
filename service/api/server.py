"""The server process: gRPC (grpc.aio) + health + reflection + metrics, models, signals.

Lifecycle: the port opens at once with every health service NOT_SERVING; models load and
warm up in the background, then health turns SERVING. A model that fails to load leaves
health NOT_SERVING (the reason is logged and returned as UNAVAILABLE), and the process keeps
answering health checks. SIGTERM/SIGINT: health NOT_SERVING at once, new calls UNAVAILABLE,
in-flight calls finish within `shutdown_grace_s`, then the process exits. SIGHUP: model
directories that are new or changed (service/api/serving.py), policies, the callers file and
the TLS certificate are reloaded (each also reloads on a file change).

With TLS on, a second, plaintext listener (`health_address`) serves only grpc.health.v1,
for probes that cannot speak TLS.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from wacht.service.api.analysis import AnalysisServicer
from wacht.service.api.calls import SHEDDING, CallRunner
from wacht.service.api.gate import ReflectionGate
from wacht.service.api.handlers import add_servicer
from wacht.service.api.intake import Intake
from wacht.service.api.models import ModelsServicer
from wacht.service.api.moderation import ModerationServicer
from wacht.service.api.serving import ReloadResult, ServedModels
from wacht.service.api.state import ServingState
from wacht.service.api.tls import server_credentials
from wacht.service.config import Config
from wacht.service.observability.logging import get_logger
from wacht.service.observability.metrics import Metrics
from wacht.service.security import Guard, KeyStore
from wacht.service.security.tls import CertificateFiles
from wacht.v1 import analysis_pb2, models_pb2, moderation_pb2

log = get_logger("wacht.server")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class WachtServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.state = ServingState(config=config, metrics=self.metrics)
        self.guard = self._guard()
        self.runner = CallRunner(self.state, self.guard)
        self.models = ServedModels(self.state, config, self.metrics)
        self._reloads: set[asyncio.Task[list[ReloadResult]]] = set()
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.intake = Intake(config.accept_loops, self.runner.door)
        self.health_server: grpc.aio.Server | None = None
        self.certificates: CertificateFiles | None = None
        self.port = 0
        self.health_port = 0
        self.http: Any = None  # service.http.server.HttpGateway when http.address is set
        self.http_port = 0
        self.metrics_port = 0
        self.service_names: list[str] = []
        self.loaded = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    def _guard(self) -> Guard:
        """API keys from `auth.keys_file` (KeysFileError stops the start), else none."""
        from wacht.service.config import resolve_path

        auth = self.config.auth
        keys = (
            KeyStore.load(resolve_path(auth.keys_file), auth.reload_interval_s)
            if auth.keys_file is not None
            else None
        )
        return Guard(keys)

    def _options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", self._max_message_bytes()),
            ("grpc.so_reuseport", int(self.config.workers > 1)),
            ("grpc.http2.bdp_probe", 0),
            # grpc core sheds calls the application has not taken yet: between a soft and a
            # hard limit of pending calls (1000/3000 by default), at random, as CANCELLED,
            # before Wacht sees them. Wacht's admission (by estimated wait: RESOURCE_EXHAUSTED
            # with RetryInfo) is what answers excess calls; these limits are raised so that
            # core only steps in far beyond.
            ("grpc.server.max_pending_requests", 20000),
            ("grpc.server.max_pending_requests_hard_limit", 40000),
        ]
        age_ms = int(self.config.max_connection_age_s * 1000)
        if age_ms:
            options += [
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", age_ms),
            ]
        return options

    def _listen(self, server: grpc.aio.Server, address: str, secure: bool) -> int:
        try:
            if secure:
                from wacht.service.config import resolve_path

                tls = self.config.tls
                assert tls.cert_file is not None and tls.key_file is not None
                self.certificates = CertificateFiles(
                    resolve_path(tls.cert_file),
                    resolve_path(tls.key_file),
                    resolve_path(tls.client_ca_file) if tls.client_ca_file else None,
                )
                port = server.add_secure_port(address, server_credentials(self.certificates))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises RuntimeError when the bind fails
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    async def start(self, load_models: bool = True) -> int:
        """Open the port (health NOT_SERVING) and start loading models; return the port."""
        gate = ReflectionGate(self.guard) if not self.config.auth.open_reflection else None
        server = grpc.aio.server(
            options=self._options(), interceptors=[gate] if gate is not None else None
        )
        self.server = server
        files = (moderation_pb2.DESCRIPTOR, analysis_pb2.DESCRIPTOR, models_pb2.DESCRIPTOR)
        servicers = (
            ModerationServicer(self.state, self.runner),
            AnalysisServicer(self.state, self.runner),
            ModelsServicer(self.state, self.runner),
        )
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for file, servicer in zip(files, servicers, strict=True):
            name = next(iter(file.services_by_name))
            full_name, methods = add_servicer(server, servicer, file, name)
            self.service_names.append(full_name)
            handlers.update(methods)
        self.servicers = servicers
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", *self.service_names):
            await self.health.set(name, NOT_SERVING)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = self._listen(server, self.config.address, self.config.tls.enabled)
        health_address = self.config.health_listen_address()
        if health_address:
            self.health_server = grpc.aio.server(
                options=[("grpc.so_reuseport", int(self.config.workers > 1))]
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self._listen(self.health_server, health_address, False)
            await self.health_server.start()
        await server.start()
        shedding = [path for path in handlers if path.rsplit("/", 1)[-1] in SHEDDING]
        intake = self.intake.start(
            server, handlers, [gate] if gate is not None else [], door_methods=shedding
        )
        if self.config.http.address:
            await self._start_http()
        if self.config.metrics_port:
            self.metrics_port = self.metrics.serve(
                self.config.metrics_port, self.config.metrics_host
            )
        log.info(
            "listening",
            address=self.config.address,
            port=self.port,
            tls=self.config.tls.enabled,
            mtls=self.config.tls.client_ca_file is not None,
            api_keys=self.guard.enforcing,
            health_port=self.health_port or None,
            metrics_port=self.metrics_port or None,
            http_port=self.http_port or None,
            extra_call_requests=intake,
            config=self.config.source,
        )
        if self.guard.enforcing and not self.config.tls.enabled:
            log.warning("API keys are checked but the port is plaintext: keys cross the "
                        "network in clear unless a proxy or mesh terminates TLS in front")
        if load_models:
            self._load_task = asyncio.create_task(self.load_models())
        return self.port

    async def _start_http(self) -> None:
        """The HTTP/JSON listener on the same state, runner and servicers as gRPC."""
        from wacht.service.http.server import HttpGateway
        from wacht.service.http.wacht_api import Servicers

        self.http = HttpGateway(
            self.state, self.runner, Servicers(*self.servicers), self.service_names,
            self._max_message_bytes(),
        )
        try:
            self.http_port = await self.http.start()
        except OSError:
            assert self.server is not None
            await self.server.stop(0)
            raise

    def _max_message_bytes(self) -> int:
        limits = self.config.limits
        return max(4 << 20, limits.max_texts_per_request * (limits.max_text_bytes + 64) + 4096)

    async def load_models(self) -> None:
        started = time.monotonic()
        try:
            await self._load_models()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state.load_error = str(exc) or type(exc).__name__
            log.error(
                "model load failed; health stays NOT_SERVING",
                error=self.state.load_error,
                error_type=type(exc).__name__,
            )
            self.state.models.clear()
        else:
            self.state.ready = True
            for name in ("", *self.service_names):
                await self.health.set(name, SERVING)
            self.models.start_watching(self.config.model_reload_interval_s)
            log.info(
                "serving",
                models=list(self.state.models),
                default=self.state.default_model,
                seconds=round(time.monotonic() - started, 2),
            )
        finally:
            self.loaded.set()

    async def _load_models(self) -> None:
        self.state.explainer = await asyncio.to_thread(self._load_explainer)
        await self.models.load_all()

    def _load_explainer(self) -> Any:
        """The generative explainer (optional): without one, GENERATIVE falls back to EVIDENCE."""
        if self.config.explainer_dir is None:
            return None
        from wacht.service.config import resolve_path

        path = resolve_path(self.config.explainer_dir)
        try:
            from wacht.service.batching.generation import GenerationQueue
            from wacht.service.runtime.generator import Generator

            generator = Generator.load(
                path,
                intra_op_threads=self.config.intra_op_threads,
                verify=self.config.verify_checksums,
            )
            log.info("explainer ready", path=str(path), generator=generator.name)
            return GenerationQueue(generator)
        except Exception as exc:
            log.error(
                "explainer failed to load; generative explanations fall back to evidence",
                path=str(path),
                error=str(exc) or type(exc).__name__,
            )
            return None

    def reload_policies(self) -> None:
        """SIGHUP: re-read the policy files (each store logs what it loaded or kept)."""
        log.info("reloading policies")
        for served in self.state.models.values():
            served.policies.reload()

    async def reload_models(self, trigger: str = "sighup") -> list[ReloadResult]:
        """Load each model directory that is new or changed since it was loaded and swap it
        in (service/api/serving.py); a bad one is refused and the old model keeps serving."""
        return await self.models.reload(trigger)

    def reload(self) -> None:
        """SIGHUP: model directories, policies, callers file, TLS certificate (the next
        handshake uses it)."""
        task = asyncio.get_running_loop().create_task(self.reload_models())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        self.reload_policies()
        if self.guard.keys is not None:
            self.guard.keys.reload()
        if self.certificates is not None:
            self.certificates.request_reload()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight calls finish, then stop."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.shutdown_grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("draining", inflight=self.state.inflight, grace_s=grace)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        drained = await self.state.wait_idle(max(0.0, deadline - time.monotonic()))
        if not drained:
            log.warning("grace period over; cancelling calls", inflight=self.state.inflight)
        if self.http is not None:
            await self.http.stop()
        if self.server is not None:
            await self.server.stop(max(0.05, min(0.5, deadline - time.monotonic())))
        await self.intake.close()
        if self.health_server is not None:
            await self.health_server.stop(0.1)
        for task in list(self._reloads):
            task.cancel()
        await self.models.close()
        if self.state.explainer is not None:
            self.state.explainer.close()
        self.metrics.close()
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads models, policies, callers and certificates."""
    server = WachtServer(config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(server.stop()))
    loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(server.stop()))
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    await server.wait_stopped()
