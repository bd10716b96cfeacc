"""Logs carry hashes, not texts; the batch observer feeds Prometheus."""

from __future__ import annotations

import hashlib
import json

import pytest

from wacht.service.observability.logging import configure_logging, get_logger, text_fingerprint
from wacht.service.observability.metrics import Metrics

SECRET = "my secret text about somebody"


def test_logs_never_hold_raw_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", raw_text=False)
    get_logger("test").info("moderate", text=text_fingerprint(SECRET))
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert SECRET not in json.dumps(line)
    assert line["text"] == {
        "sha256": hashlib.sha256(SECRET.encode()).hexdigest()[:16],
        "length": len(SECRET),
    }
    assert line["event"] == "moderate" and line["level"] == "info"


def test_raw_text_only_when_enabled() -> None:
    configure_logging("info", "json", raw_text=True)
    try:
        assert text_fingerprint(SECRET)["text"] == SECRET
        assert text_fingerprint("\ud800")["length"] == 1  # a lone surrogate does not crash
    finally:
        configure_logging("info", "json", raw_text=False)


def test_batch_observer_metrics() -> None:
    metrics = Metrics()
    observer = metrics.observer("m")
    observer.batch_done(size=4, tokens=100, padded_tokens=28, inference_s=0.01)
    observer.queue_depth(7)
    observer.batch_formed(9)
    observer.dropped("cancelled", 3)
    metrics.request_done("Moderate", "OK", 0.02)
    metrics.explanation_fallback("no_generator")
    get = metrics.registry.get_sample_value
    assert get("wacht_batch_size_count", {"model": "m"}) == 1
    assert get("wacht_batch_size_bucket", {"model": "m", "le": "3.0"}) == 0
    assert get("wacht_batch_size_bucket", {"model": "m", "le": "4.0"}) == 1
    assert get("wacht_queue_batch_size_count", {"model": "m"}) == 1
    assert get("wacht_queue_batch_size_sum", {"model": "m"}) == 9
    assert get("wacht_batch_tokens_sum", {"model": "m"}) == 100
    assert get("wacht_padded_tokens_total", {"model": "m"}) == 28
    assert get("wacht_queue_texts", {"model": "m"}) == 7
    assert get("wacht_dropped_texts_total", {"model": "m", "reason": "cancelled"}) == 3
    assert get("wacht_requests_total", {"method": "Moderate", "code": "OK"}) == 1
    assert get("wacht_explanation_fallbacks_total", {"reason": "no_generator"}) == 1
