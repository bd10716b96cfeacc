"""Prometheus metrics, served on their own HTTP port (one registry per server)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "wacht_requests",
            "RPCs answered, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "wacht_request_duration_seconds",
            "RPC latency by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter("wacht_texts", "Texts received, by method", ["method"], registry=r)
        self.queue_depth = Gauge(
            "wacht_queue_texts", "Texts waiting in the batch queue", ["model"], registry=r
        )
        self.queue_batch_size = Histogram(
            "wacht_queue_batch_size",
            "Windows per batch taken from the queue at once (run as micro-batches)",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "wacht_batch_size",
            "Windows per forward (micro-batch)",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "wacht_batch_tokens",
            "Real (unpadded) tokens per inference batch",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.padded_tokens = Counter(
            "wacht_padded_tokens",
            "Padding tokens computed in inference batches",
            ["model"],
            registry=r,
        )
        self.inference = Histogram(
            "wacht_inference_seconds",
            "Time of one inference batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "wacht_dropped_texts",
            "Queued texts dropped before inference, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.explanation_fallbacks = Counter(
            "wacht_explanation_fallbacks",
            "Generative explanations that fell back to evidence",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "wacht_model_info",
            "Models being served (value 1)",
            ["name", "version", "precision", "provider", "default"],
            registry=r,
        )
        self.model_reloads = Counter(
            "wacht_model_reloads",
            "Model directories loaded without a restart, by result (loaded | refused)",
            ["result"],
            registry=r,
        )
        self.stream_inflight = Gauge(
            "wacht_stream_inflight_messages",
            "ModerateStream messages being worked on",
            registry=r,
        )
        # Load per pod, for autoscaling (HPA through prometheus-adapter or KEDA).
        self.inflight_calls = Gauge(
            "wacht_inflight_calls", "Calls being worked on (all methods)", registry=r
        )
        self.inflight_texts = Gauge(
            "wacht_inflight_texts",
            "Texts admitted and not yet answered (queued or being scored)",
            registry=r,
        )
        # `caller` is a configured caller name or anonymous / mtls / unauthenticated: a
        # bounded set, never a key or a client-chosen string.
        self.caller_requests = Counter(
            "wacht_caller_requests",
            "RPCs answered, by caller and status code",
            ["caller", "code"],
            registry=r,
        )
        self.caller_texts = Counter(
            "wacht_caller_texts", "Texts admitted, by caller", ["caller"], registry=r
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint; return the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def request_done(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def explanation_fallback(self, reason: str) -> None:
        self.explanation_fallbacks.labels(reason or "unknown").inc()

    def observer(self, model: str) -> BatchMetrics:
        return BatchMetrics(self, model)


class BatchMetrics:
    """The batcher's BatchObserver for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._size = metrics.batch_size.labels(model)
        self._formed = metrics.queue_batch_size.labels(model)
        self._tokens = metrics.batch_tokens.labels(model)
        self._padded = metrics.padded_tokens.labels(model)
        self._inference = metrics.inference.labels(model)
        self._queue = metrics.queue_depth.labels(model)
        self._dropped = metrics.dropped
        self._model = model

    def batch_done(self, size: int, tokens: int, padded_tokens: int, inference_s: float) -> None:
        self._size.observe(size)
        self._tokens.observe(tokens)
        self._padded.inc(padded_tokens)
        self._inference.observe(inference_s)

    def queue_depth(self, texts: int) -> None:
        self._queue.set(texts)

    def batch_formed(self, windows: int) -> None:
        self._formed.observe(windows)

    def dropped(self, reason: str, count: int) -> None:
        self._dropped.labels(self._model, reason).inc(count)
