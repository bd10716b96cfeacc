"""A small typed client for Wacht: `WachtClient` (sync) and `AsyncWachtClient` (asyncio).

Both return the generated proto messages. Texts may be given as one string, a list of
strings (ids become "0", "1", ...), a mapping id -> text, or `TextInput` messages.

    with WachtClient("127.0.0.1:50051") as client:
        response = client.moderate(["you are lovely", "you idiot"])
        print(response.results[1].decision)

Errors are `grpc.RpcError`; `error_status(err)` returns the `google.rpc.Status` with its
details (BadRequest field violations, RetryInfo, QuotaFailure) and `error_details(err)`
unpacks them; `describe_error(err)` says in one line what went wrong (TLS handshakes too).

TLS and keys:

    WachtClient("wacht.example:50051", ca_file="ca.pem")                      # TLS
    WachtClient(..., ca_file="ca.pem", cert_file="me.pem", key_file="me.key") # mTLS
    WachtClient(..., api_key=os.environ["WACHT_API_KEY"])   # authorization: Bearer <key>

Every channel the client makes uses `SERVICE_CONFIG` (round_robin over every address the
name resolves to, retries of UNAVAILABLE); for Kubernetes point it at the headless Service,
`dns:///wacht-headless.<namespace>.svc.cluster.local:50051`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from wacht.v1 import (
    analysis_pb2,
    analysis_pb2_grpc,
    common_pb2,
    models_pb2,
    models_pb2_grpc,
    moderation_pb2,
    moderation_pb2_grpc,
)

DEFAULT_ADDRESS = "127.0.0.1:50051"
TextsArg = str | Sequence[str] | Mapping[str, str] | Sequence[common_pb2.TextInput]
EXPLANATION_LEVELS = {
    "none": moderation_pb2.EXPLANATION_LEVEL_NONE,
    "evidence": moderation_pb2.EXPLANATION_LEVEL_EVIDENCE,
    "generative": moderation_pb2.EXPLANATION_LEVEL_GENERATIVE,
}
TRUNCATIONS = {
    "window": common_pb2.TRUNCATION_SLIDING_WINDOW,
    "head": common_pb2.TRUNCATION_HEAD,
    "reject": common_pb2.TRUNCATION_REJECT,
}
ANALYSES = {
    "toxicity": moderation_pb2.ANALYSIS_TOXICITY,
    "sentiment": moderation_pb2.ANALYSIS_SENTIMENT,
}
MAX_MESSAGE_BYTES = 64 << 20
# The client default service config (deploy/kubernetes/client-service-config.json is the
# same, checked by a test): spread calls over every resolved address, and retry a call
# that got UNAVAILABLE (a replica draining or gone) on another one, or CANCELLED before any
# answer: a stream that reached a replica in the instant its port closes is reset by grpc
# core (RST_STREAM CANCEL), seen as CANCELLED. A call the application cancels is never
# retried. Every Wacht method is safe to retry: none changes state.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [
                {"service": "wacht.v1.Moderation"},
                {"service": "wacht.v1.Analysis"},
                {"service": "wacht.v1.Models"},
            ],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            },
        }
    ],
}


def text_inputs(texts: TextsArg) -> list[common_pb2.TextInput]:
    if isinstance(texts, str):
        return [common_pb2.TextInput(id="0", text=texts)]
    if isinstance(texts, Mapping):
        return [common_pb2.TextInput(id=str(k), text=v) for k, v in texts.items()]
    out = []
    for i, item in enumerate(texts):
        if isinstance(item, common_pb2.TextInput):
            out.append(item)
        else:
            out.append(common_pb2.TextInput(id=str(i), text=item))
    return out


def _enum(value: str | int, table: Mapping[str, int], what: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return table[value.lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}; one of {sorted(table)}") from None


def moderate_request(
    texts: TextsArg,
    *,
    model: str = "",
    policy: str = "",
    categories: Sequence[str] = (),
    analyses: Sequence[str | int] = (),
    explanation: str | int = "none",
    evidence_spans: bool = False,
    suggest_rewrite: bool = False,
    raw_scores: bool = False,
    truncation: str | int = 0,
    overrides: Mapping[str, Mapping[str, Any] | moderation_pb2.ThresholdOverride] | None = None,
    language: str = "",
) -> moderation_pb2.ModerateRequest:
    request = moderation_pb2.ModerateRequest(
        texts=text_inputs(texts),
        model=model,
        policy=policy,
        categories=list(categories),
        analyses=[_enum(a, ANALYSES, "analysis") for a in analyses],
        explanation=_enum(explanation, EXPLANATION_LEVELS, "explanation level"),
        evidence_spans=evidence_spans,
        suggest_rewrite=suggest_rewrite,
        raw_scores=raw_scores,
        truncation=_enum(truncation, TRUNCATIONS, "truncation"),
        language=language,
    )
    for category, value in (overrides or {}).items():
        override = (
            value
            if isinstance(value, moderation_pb2.ThresholdOverride)
            else moderation_pb2.ThresholdOverride(**value)
        )
        request.threshold_overrides[category].CopyFrom(override)
    return request


def analyze_request(
    texts: TextsArg,
    *,
    model: str = "",
    tasks: Sequence[str] = (),
    truncation: str | int = 0,
    language: str = "",
) -> analysis_pb2.AnalyzeRequest:
    return analysis_pb2.AnalyzeRequest(
        texts=text_inputs(texts),
        model=model,
        tasks=list(tasks),
        truncation=_enum(truncation, TRUNCATIONS, "truncation"),
        language=language,
    )


def explain_request(
    text: str | common_pb2.TextInput,
    *,
    model: str = "",
    policy: str = "",
    suggest_rewrite: bool = False,
    language: str = "",
) -> moderation_pb2.ExplainRequest:
    item = text if isinstance(text, common_pb2.TextInput) else common_pb2.TextInput(text=text)
    return moderation_pb2.ExplainRequest(
        text=item, model=model, policy=policy, suggest_rewrite=suggest_rewrite, language=language
    )


def stream_message(
    item: moderation_pb2.ModerateStreamRequest | moderation_pb2.ModerateRequest | TextsArg,
    index: int,
) -> moderation_pb2.ModerateStreamRequest:
    if isinstance(item, moderation_pb2.ModerateStreamRequest):
        return item
    request = item if isinstance(item, moderation_pb2.ModerateRequest) else moderate_request(item)
    return moderation_pb2.ModerateStreamRequest(message_id=str(index), request=request)


def error_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carries (None when it has no rich status)."""
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None


def unpack_details(status: status_pb2.Status) -> list[Message]:
    """The BadRequest / RetryInfo / QuotaFailure details of a google.rpc.Status."""
    out: list[Message] = []
    for detail in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out.append(message)
    return out


def error_details(error: grpc.RpcError | status_pb2.Status) -> list[Message]:
    """BadRequest / RetryInfo / QuotaFailure details of a failed call or in-stream status."""
    status = error if isinstance(error, status_pb2.Status) else error_status(error)
    return unpack_details(status) if status is not None else []


# (substring of grpc's transport error, what it means for the person at the keyboard)
_TLS_HINTS = (
    ("CERTIFICATE_VERIFY_FAILED", "the server's certificate is not trusted by the CA given "
     "(ca_file / --ca), has expired, or does not name this host"),
    ("WRONG_VERSION_NUMBER", "the server does not speak TLS on this port (drop --ca), or it "
     "is the plaintext health port"),
    ("Socket closed", "the server closed the connection during the handshake: it may require "
     "TLS, or a client certificate (mTLS: --cert/--key) it trusts and that has not expired"),
    ("CERTIFICATE_REQUIRED", "the server requires a client certificate (mTLS: --cert/--key)"),
    ("handshake", "the TLS handshake failed: check --ca, --cert and --key"),
)


def describe_error(error: grpc.RpcError) -> str:
    """One line for a person: the code, the server's message, and for a failed TLS
    handshake (UNAVAILABLE from the transport) the likely cause."""
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    line = f"{code.name}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        for needle, hint in _TLS_HINTS:
            if needle.lower() in details.lower():
                return f"{line} (TLS: {hint})"
    return line


def _options(service_config: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if service_config:
        options += [
            ("grpc.service_config", json.dumps(service_config)),
            ("grpc.enable_retries", 1),
        ]
    return options


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def channel_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials: `ca_file` (None = the system roots), and for mTLS the client
    certificate and key."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together (mTLS)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file),
        certificate_chain=_read(cert_file),
    )


def _channel_args(
    tls: bool | None,
    ca_file: str | Path | None,
    cert_file: str | Path | None,
    key_file: str | Path | None,
    server_name: str | None,
    service_config: Mapping[str, Any] | None,
    own_connection: bool = False,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    options = _options(service_config)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if own_connection:  # grpc otherwise shares connections among like channels of a process
        options.append(("grpc.use_local_subchannel_pool", 1))
    secure = tls if tls is not None else any(x is not None for x in (ca_file, cert_file))
    return (channel_credentials(ca_file, cert_file, key_file) if secure else None), options


class _KeyInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <key>` to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(
            details.method, details.timeout, (*(details.metadata or ()), *self.metadata),
            details.credentials, getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(
        self, method: str, timeout: Any, metadata: Any, credentials: Any,
        wait_for_ready: Any, compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class _AsyncKey:
    """The same for grpc.aio (one class per call kind, as grpc.aio requires)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, details: Any) -> Any:
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout,
            grpc.aio.Metadata(*(tuple(details.metadata or ()) + self.metadata)),
            details.credentials, details.wait_for_ready,
        )


class _AsyncUU(_AsyncKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AsyncUS(_AsyncKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AsyncSU(_AsyncKey, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AsyncSS(_AsyncKey, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def make_channel(
    address: str,
    *,
    tls: bool | None = None,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    server_name: str | None = None,
    api_key: str | None = None,
    service_config: Mapping[str, Any] | None = SERVICE_CONFIG,
    own_connection: bool = False,
) -> grpc.Channel:
    """A blocking channel: TLS when `tls` or a CA/certificate is given, the API key on
    every call, and the default service config (None = grpc's defaults). `own_connection`:
    connections of its own, not shared with other channels of this process to the same
    address, so that several clients spread over a server's workers (or replicas)."""
    credentials, options = _channel_args(tls, ca_file, cert_file, key_file, server_name,
                                         service_config, own_connection)
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(address, options=options)
    )
    metadata = _key_metadata(api_key)
    return grpc.intercept_channel(channel, _KeyInterceptor(metadata)) if metadata else channel


def make_async_channel(
    address: str,
    *,
    tls: bool | None = None,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    server_name: str | None = None,
    api_key: str | None = None,
    service_config: Mapping[str, Any] | None = SERVICE_CONFIG,
    own_connection: bool = False,
) -> grpc.aio.Channel:
    """The grpc.aio channel of `make_channel`."""
    credentials, options = _channel_args(tls, ca_file, cert_file, key_file, server_name,
                                         service_config, own_connection)
    metadata = _key_metadata(api_key)
    interceptors = [cls(metadata) for cls in (_AsyncUU, _AsyncUS, _AsyncSU, _AsyncSS)] \
        if metadata else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


class WachtClient:
    """Blocking client. `timeout` (seconds) is the default deadline of every call; the
    keyword options are those of `make_channel` (ignored when `channel` is given)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
        **channel_options: Any,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = channel or make_channel(address, **channel_options)
        self.moderation = moderation_pb2_grpc.ModerationStub(self.channel)
        self.analysis = analysis_pb2_grpc.AnalysisStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> WachtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def moderate(
        self, texts: TextsArg, *, timeout: float | None = None, **options: Any
    ) -> moderation_pb2.ModerateResponse:
        return self.moderation.Moderate(
            moderate_request(texts, **options), timeout=self._t(timeout)
        )

    def moderate_raw(
        self, request: moderation_pb2.ModerateRequest, *, timeout: float | None = None
    ) -> moderation_pb2.ModerateResponse:
        return self.moderation.Moderate(request, timeout=self._t(timeout))

    def analyze(
        self, texts: TextsArg, *, timeout: float | None = None, **options: Any
    ) -> analysis_pb2.AnalyzeResponse:
        return self.analysis.Analyze(analyze_request(texts, **options), timeout=self._t(timeout))

    def stream(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> Iterator[moderation_pb2.ModerateStreamResponse]:
        requests = (stream_message(m, i) for i, m in enumerate(messages))
        return self.moderation.ModerateStream(requests, timeout=self._t(timeout))

    def explain(
        self, text: str | common_pb2.TextInput, *, timeout: float | None = None, **options: Any
    ) -> Iterator[moderation_pb2.ExplainResponse]:
        return self.moderation.Explain(explain_request(text, **options), timeout=self._t(timeout))

    def list_policies(self, *, timeout: float | None = None) -> moderation_pb2.ListPoliciesResponse:
        return self.moderation.ListPolicies(
            moderation_pb2.ListPoliciesRequest(), timeout=self._t(timeout)
        )

    def list_categories(
        self, *, timeout: float | None = None
    ) -> moderation_pb2.ListCategoriesResponse:
        return self.moderation.ListCategories(
            moderation_pb2.ListCategoriesRequest(), timeout=self._t(timeout)
        )

    def list_models(self, *, timeout: float | None = None) -> models_pb2.ListModelsResponse:
        return self.models.ListModels(models_pb2.ListModelsRequest(), timeout=self._t(timeout))

    def model_info(self, name: str = "", *, timeout: float | None = None) -> models_pb2.ModelInfo:
        return self.models.GetModelInfo(
            models_pb2.GetModelInfoRequest(name=name), timeout=self._t(timeout)
        )

    def health(self, service: str = "", *, timeout: float | None = None) -> int:
        """HealthCheckResponse.ServingStatus of `service` ("" = the whole server)."""
        reply = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._t(timeout)
        )
        return reply.status

    def watch_health(
        self, service: str = "", *, timeout: float | None = None, wait_for_ready: bool = False
    ) -> Iterator[int]:
        """Statuses of `service` as they change (first the current one). `wait_for_ready`:
        wait for the server to come up instead of failing with UNAVAILABLE."""
        for reply in self.health_stub.Watch(
            health_pb2.HealthCheckRequest(service=service),
            timeout=timeout,
            wait_for_ready=wait_for_ready,
        ):
            yield reply.status


class AsyncWachtClient:
    """asyncio client (grpc.aio); same methods as WachtClient, awaitable."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = 30.0,
        channel: grpc.aio.Channel | None = None,
        **channel_options: Any,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = channel or make_async_channel(address, **channel_options)
        self.moderation = moderation_pb2_grpc.ModerationStub(self.channel)
        self.analysis = analysis_pb2_grpc.AnalysisStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    async def __aenter__(self) -> AsyncWachtClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def moderate(
        self, texts: TextsArg, *, timeout: float | None = None, **options: Any
    ) -> moderation_pb2.ModerateResponse:
        return await self.moderation.Moderate(
            moderate_request(texts, **options), timeout=self._t(timeout)
        )

    async def moderate_raw(
        self, request: moderation_pb2.ModerateRequest, *, timeout: float | None = None
    ) -> moderation_pb2.ModerateResponse:
        return await self.moderation.Moderate(request, timeout=self._t(timeout))

    async def analyze(
        self, texts: TextsArg, *, timeout: float | None = None, **options: Any
    ) -> analysis_pb2.AnalyzeResponse:
        return await self.analysis.Analyze(
            analyze_request(texts, **options), timeout=self._t(timeout)
        )

    def stream(
        self, messages: Iterable[Any] | AsyncIterable[Any], *, timeout: float | None = None
    ) -> AsyncIterator[moderation_pb2.ModerateStreamResponse]:
        async def requests() -> AsyncIterator[moderation_pb2.ModerateStreamRequest]:
            if isinstance(messages, AsyncIterable):
                index = 0
                async for message in messages:
                    yield stream_message(message, index)
                    index += 1
            else:
                for index, message in enumerate(messages):
                    yield stream_message(message, index)

        return self.moderation.ModerateStream(requests(), timeout=self._t(timeout))

    def explain(
        self, text: str | common_pb2.TextInput, *, timeout: float | None = None, **options: Any
    ) -> AsyncIterator[moderation_pb2.ExplainResponse]:
        return self.moderation.Explain(explain_request(text, **options), timeout=self._t(timeout))

    async def list_policies(
        self, *, timeout: float | None = None
    ) -> moderation_pb2.ListPoliciesResponse:
        return await self.moderation.ListPolicies(
            moderation_pb2.ListPoliciesRequest(), timeout=self._t(timeout)
        )

    async def list_categories(
        self, *, timeout: float | None = None
    ) -> moderation_pb2.ListCategoriesResponse:
        return await self.moderation.ListCategories(
            moderation_pb2.ListCategoriesRequest(), timeout=self._t(timeout)
        )

    async def list_models(self, *, timeout: float | None = None) -> models_pb2.ListModelsResponse:
        return await self.models.ListModels(
            models_pb2.ListModelsRequest(), timeout=self._t(timeout)
        )

    async def model_info(
        self, name: str = "", *, timeout: float | None = None
    ) -> models_pb2.ModelInfo:
        return await self.models.GetModelInfo(
            models_pb2.GetModelInfoRequest(name=name), timeout=self._t(timeout)
        )

    async def health(self, service: str = "", *, timeout: float | None = None) -> int:
        reply = await self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._t(timeout)
        )
        return reply.status

    async def watch_health(
        self, service: str = "", *, timeout: float | None = None, wait_for_ready: bool = False
    ) -> AsyncIterator[int]:
        async for reply in self.health_stub.Watch(
            health_pb2.HealthCheckRequest(service=service),
            timeout=timeout,
            wait_for_ready=wait_for_ready,
        ):
            yield reply.status
