"""API keys, rights and quotas through the real server and the real client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from api_support import make_config, metric_value, require_model, server_thread
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from wacht.client import WachtClient, error_details
from wacht.service.security import generate_key, hash_key

pytestmark = pytest.mark.slow
KEYS = {name: generate_key() for name in ("web", "reader", "flood", "calm", "spare", "bulk")}


def _callers() -> list[dict[str, Any]]:
    return [
        {"name": "web", "key_sha256": [hash_key(KEYS["web"])], "texts_per_second": 20,
         "burst_texts": 20},
        {"name": "reader", "key_sha256": [hash_key(KEYS["reader"])],
         "methods": ["Moderate", "List*"], "models": ["some-other-*"]},
        {"name": "flood", "key_sha256": [hash_key(KEYS["flood"])], "max_concurrent_calls": 2},
        {"name": "calm", "key_sha256": [hash_key(KEYS["calm"])], "max_concurrent_calls": 2},
        {"name": "bulk", "key_sha256": [hash_key(KEYS["bulk"])]},
    ]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "callers.yaml"
    path.write_text(json.dumps({"callers": _callers()}))
    return path


@pytest.fixture(scope="module")
def server(keys_file: Path) -> Iterator[Any]:
    require_model()
    config = make_config(auth={"keys_file": keys_file, "reload_interval_s": 0.0,
                               "open_reflection": False})
    with server_thread(config) as running:
        yield running


def _client(server: Any, name: str | None) -> WachtClient:
    return WachtClient(server.address, timeout=30, api_key=KEYS[name] if name else None)


def _code(fn: Any) -> tuple[grpc.StatusCode, grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value


def test_missing_and_unknown_keys_are_unauthenticated(server: Any) -> None:
    with _client(server, None) as anonymous:
        code, error = _code(lambda: anonymous.moderate("hello"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in error.details()
        # Health stays open for probes.
        assert anonymous.health() == health_pb2.HealthCheckResponse.SERVING
    with WachtClient(server.address, api_key="wacht_not-a-key") as stranger:
        code, error = _code(lambda: stranger.list_categories())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "unknown API key"
    assert metric_value(server.metrics_text(), "wacht_caller_requests_total",
                        caller="unauthenticated", code="UNAUTHENTICATED") >= 2


def test_reflection_needs_a_key_when_not_open(server: Any) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = [("authorization", f"Bearer {KEYS['web']}")]
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata))
    names = {s.name for s in replies[0].list_services_response.service}
    assert "wacht.v1.Moderation" in names


def test_methods_and_models_the_key_may_not_use(server: Any) -> None:
    with _client(server, "reader") as reader:
        assert reader.list_categories().categories  # List* is allowed
        code, error = _code(lambda: reader.analyze("hello"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "may not call Analyze" in error.details()
        code, error = _code(lambda: list(reader.explain("hello")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, error = _code(lambda: reader.moderate("hello", model="minilm-moderation"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "may not use model(s) ['minilm-moderation']" in error.details()
    assert metric_value(server.metrics_text(), "wacht_caller_requests_total",
                        caller="reader", code="PERMISSION_DENIED") >= 3


def test_texts_per_second_quota(server: Any) -> None:
    with _client(server, "web") as web:
        assert len(web.moderate([f"text {i}" for i in range(20)]).results) == 20
        code, error = _code(lambda: web.moderate([f"more {i}" for i in range(10)]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error_details(error)
        retry = next(d for d in details if isinstance(d, error_details_pb2.RetryInfo))
        quota = next(d for d in details if isinstance(d, error_details_pb2.QuotaFailure))
        delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        assert 0.05 < delay <= 0.55  # 10 texts at 20/s, minus what refilled meanwhile
        assert quota.violations[0].subject == "caller:web"
        assert "20 texts per second" in quota.violations[0].description
        time.sleep(delay)
        assert len(web.moderate([f"more {i}" for i in range(10)]).results) == 10
        # A stream message over quota fails alone, the stream goes on.
        replies = list(web.stream([[f"s{i}" for i in range(20)], ["after"]]))
        codes = [r.error.code for r in replies if r.HasField("error")]
        assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
        assert len(replies) == 2
    text = server.metrics_text()
    assert metric_value(text, "wacht_caller_requests_total", caller="web",
                        code="RESOURCE_EXHAUSTED") >= 1
    assert metric_value(text, "wacht_caller_texts_total", caller="web") >= 30


def test_one_key_flooding_does_not_starve_another(server: Any) -> None:
    """`flood` runs 12 threads of back-to-back calls against its cap of 2 concurrent calls;
    `calm` makes 15 calls meanwhile: every one succeeds, at most a few times slower than alone."""
    texts = [f"a somewhat longer text number {i} to give the model work" for i in range(16)]
    with _client(server, "calm") as calm:
        alone = []
        for _ in range(5):
            started = time.monotonic()
            calm.moderate(texts)
            alone.append(time.monotonic() - started)
    stop = threading.Event()
    outcomes: dict[str, int] = {"ok": 0, "exhausted": 0, "other": 0}
    lock = threading.Lock()

    def flood() -> None:
        with _client(server, "flood") as client:
            while not stop.is_set():
                try:
                    client.moderate(texts)
                    key = "ok"
                except grpc.RpcError as exc:
                    key = "exhausted" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED \
                        else "other"
                with lock:
                    outcomes[key] += 1

    threads = [threading.Thread(target=flood) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    latencies = []
    try:
        with _client(server, "calm") as calm:
            for _ in range(15):
                started = time.monotonic()
                assert len(calm.moderate(texts).results) == 16  # never refused
                latencies.append(time.monotonic() - started)
        # The autoscaling gauge sees the load (the flood's 2 admitted calls of 16 texts).
        inflight = [metric_value(server.metrics_text(), "wacht_inflight_texts")
                    for _ in range(30)]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert outcomes["exhausted"] > 0 and outcomes["ok"] > 0 and outcomes["other"] == 0
    assert max(inflight) >= 16 and max(inflight) <= 2 * 16
    assert metric_value(server.metrics_text(), "wacht_inflight_texts") == 0
    median = sorted(latencies)[len(latencies) // 2]
    # The flood holds at most 2 calls in the server; calm's median call waits behind at
    # most those (2 cores shared with the flooding client threads).
    assert median < max(sorted(alone)[2] * 6, 0.5), (alone, latencies)


def test_rotation_without_restart(server: Any, keys_file: Path) -> None:
    with _client(server, "spare") as spare:
        assert _code(lambda: spare.list_categories())[0] == grpc.StatusCode.UNAUTHENTICATED
        callers = _callers() + [{"name": "spare", "key_sha256": [hash_key(KEYS["spare"])]}]
        keys_file.write_text(json.dumps({"callers": callers}))
        assert spare.list_categories().categories
        keys_file.write_text(json.dumps({"callers": _callers()}))
        assert _code(lambda: spare.list_categories())[0] == grpc.StatusCode.UNAUTHENTICATED


def test_logs_name_the_caller_never_the_key(server: Any, capfd: Any) -> None:
    from wacht.service.observability.logging import configure_logging

    configure_logging("debug", "json")
    try:
        with _client(server, "web") as web:
            web.list_categories()
    finally:
        configure_logging("info", "json")
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line.get("caller") == "web" and line.get("method") == "ListCategories"
               for line in lines)
    assert KEYS["web"] not in err and hash_key(KEYS["web"]) not in err


def test_cli_keys_add_and_call(tmp_path: Path, capsys: Any) -> None:
    from wacht.service.cli import main

    path = tmp_path / "callers.yaml"
    assert main(["keys", "add", "ops", "--file", str(path), "--methods", "List*",
                 "--texts-per-second", "5"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("wacht_") and key not in path.read_text()
    assert hash_key(key) in path.read_text()
    config = make_config(auth={"keys_file": path})
    with server_thread(config) as running:
        key_file = tmp_path / "key"
        key_file.write_text(key + "\n")
        args = ["--address", running.address, "--api-key-file", str(key_file)]
        assert main(["models", "list", *args]) == 0  # ListModels matches List*
        capsys.readouterr()
        assert main(["moderate", "hello", *args]) == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err


def test_the_batcher_is_fair_per_caller_not_per_call(keys_file: Path) -> None:
    """A named caller's calls share one flow: while `bulk` runs one long call, `calm`'s small
    call takes turns with it and is answered first, but bulk's own small call queues behind
    bulk's long one (refused by its estimated wait, or answered with its last windows).
    Per-call fairness would answer bulk's small call first too. (A wait bound of 2 s: the
    default 500 ms refuses small calls while the long call's forwards run, which is not what
    this tests.)"""
    config = make_config(auth={"keys_file": keys_file, "reload_interval_s": 0.0},
                         batching={"max_queue_wait_ms": 2000})
    with server_thread(config) as running:
        _fair_per_caller(running)


def _fair_per_caller(server: Any) -> None:
    sentence = "a longer text that needs a full window of the model to score it well. "
    big = [f"{i} " + sentence * 14 for i in range(256)]
    finished: dict[str, float] = {}
    codes: dict[str, grpc.StatusCode] = {}

    def call(name: str, key: str, texts: list[str]) -> None:
        with _client(server, key) as client:
            try:
                client.moderate(texts, truncation="head" if name != "big" else "window")
                codes[name] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                codes[name] = exc.code()
            finished[name] = time.monotonic()

    long_call = threading.Thread(target=call, args=("big", "bulk", big))
    long_call.start()
    time.sleep(1.0)  # its texts are tokenised and queued (in 64 KB chunks) by then
    small = [threading.Thread(target=call, args=(name, key, ["hello there"]))
             for name, key in (("calm", "calm"), ("bulk-small", "bulk"))]
    for t in small:
        t.start()
    for t in [long_call, *small]:
        t.join(120)
    assert codes["big"] == grpc.StatusCode.OK, codes
    assert codes["calm"] == grpc.StatusCode.OK and finished["calm"] < finished["big"], codes
    # bulk's small call waited behind bulk's long one: answered with its last windows (the
    # long call's own answer, 256 results, may still be on its way), not next to calm's
    tail = finished["big"] - finished["calm"]
    assert codes["bulk-small"] == grpc.StatusCode.RESOURCE_EXHAUSTED or (
        codes["bulk-small"] == grpc.StatusCode.OK
        and finished["bulk-small"] - finished["calm"] > 0.5 * tail
    ), (codes, finished)
