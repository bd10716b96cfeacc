"""Health, reflection, drain on SIGTERM, broken models, batching under load, overload, cancel."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from api_support import (
    ServerThread,
    make_config,
    metric_value,
    require_model,
    server_thread,
    start_subprocess,
    wait_for,
)
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from wacht.client import AsyncWachtClient, WachtClient, error_details, moderate_request

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "wacht.v1.Moderation", "wacht.v1.Analysis", "wacht.v1.Models")
SENTENCE = "text number {} about a long walk in the park, the weather and many other things"


def _watch(address: str, service: str, statuses: list[int], stop: threading.Event) -> None:
    with WachtClient(address, timeout=None) as c:
        try:
            for status in c.watch_health(service, timeout=120):
                statuses.append(status)
                if stop.is_set():
                    return
        except grpc.RpcError:
            return


def test_health_turns_serving_after_load_and_watch_sees_it() -> None:
    require_model()
    server = ServerThread(make_config(), load_models=False)
    try:
        statuses: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(
            target=_watch, args=(server.address, "wacht.v1.Moderation", statuses, stop)
        )
        watcher.start()
        with WachtClient(server.address, timeout=10) as c:
            assert all(c.health(s) == NOT_SERVING for s in SERVICES)
            with pytest.raises(grpc.RpcError) as caught:
                c.moderate(["too early"])
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert c.list_categories().categories  # answers without a model
            wait_for(lambda: statuses == [NOT_SERVING], 10)
            server.call(server.server.load_models())
            assert all(c.health(s) == SERVING for s in SERVICES)
            wait_for(lambda: statuses == [NOT_SERVING, SERVING], 10)
            with pytest.raises(grpc.RpcError) as caught:
                c.health("no.such.Service")
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            stop.set()
            server.call(server.server.stop(2.0))
            wait_for(lambda: statuses[-1:] == [NOT_SERVING], 10)
        watcher.join(10)
    finally:
        server.stop()


def test_reflection_lists_services(wacht_server: ServerThread) -> None:
    with grpc.insecure_channel(wacht_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"wacht.v1.Moderation", "wacht.v1.Analysis", "wacht.v1.Models"} <= names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_broken_model_keeps_not_serving(tmp_path: Path, kind: str) -> None:
    model = require_model()
    target = tmp_path / "model"
    if kind == "corrupt":
        shutil.copytree(model, target)
        with (target / "tokenizer.json").open("ab") as f:
            f.write(b" ")
    with server_thread(make_config(models=[target]), require_ready=False) as server:
        state = server.server.state
        assert not state.ready
        assert ("not a directory" if kind == "missing" else "sha256") in state.load_error
        with WachtClient(server.address, timeout=10) as c:
            assert c.health() == NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                c.moderate(["hello"])
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no model" in caught.value.details()
            assert c.health() == NOT_SERVING


def test_sighup_reloads_policies_and_sigterm_drains(tmp_path: Path) -> None:
    require_model()
    log_file = tmp_path / "server.log"
    policies = tmp_path / "policies"
    policies.mkdir()
    env = {
        "WACHT_SHUTDOWN_GRACE_S": "20",
        "WACHT_POLICIES_DIR": str(policies),
        "WACHT_LOG__LEVEL": "debug",  # per-call lines, which must still hold no raw text
    }
    process, port = start_subprocess(env, log_file)
    address = f"127.0.0.1:{port}"
    try:
        statuses: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(address, "", statuses, stop))
        with WachtClient(address, timeout=60) as c:
            wait_for(lambda: _health_or_none(c) is not None, 60)
            watcher.start()
            wait_for(lambda: SERVING in statuses, 90)
            assert statuses[0] in (NOT_SERVING, SERVING)
            assert [p.name for p in c.list_policies().policies] == ["default"]
            (policies / "strict.yaml").write_text("categories: {insult: {review: 0.1}}\n")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: len(c.list_policies().policies) == 2, 10)
            assert c.moderate(["hello"], policy="strict").policy == "strict"
            texts = [SENTENCE.format(i) * 6 for i in range(256)]
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(c.moderate, texts)
                time.sleep(0.3)  # 256 texts take seconds on 2 cores: it is in flight now
                process.send_signal(signal.SIGTERM)
                wait_for(lambda: statuses[-1] == NOT_SERVING, 10)
                assert not in_flight.done(), "the in-flight call must still be running"
                with pytest.raises(grpc.RpcError) as caught:
                    c.moderate(["arrived during drain"])
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                response = in_flight.result(60)
            assert len(response.results) == 256
        assert process.wait(30) == 0
        stop.set()
        watcher.join(10)
        log = log_file.read_text()
        assert '"draining"' in log and '"stopped"' in log
        assert '"sha256"' in log and "walk in the park" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _health_or_none(c: WachtClient) -> int | None:
    try:
        return c.health(timeout=1)
    except grpc.RpcError:
        return None


def test_batches_form_under_concurrent_load(
    wacht_server: ServerThread, client: WachtClient
) -> None:
    def counts(text: str) -> tuple[float, float]:
        return (
            metric_value(text, "wacht_queue_batch_size_count"),
            metric_value(text, "wacht_queue_batch_size_bucket", le="1.0"),
        )

    batches_before, singles_before = counts(wacht_server.metrics_text())
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: client.moderate([SENTENCE.format(i)]), range(96)))
    assert all(len(r.results) == 1 for r in results)
    text = wacht_server.metrics_text()
    batches, singles = counts(text)
    assert batches > batches_before
    assert (batches - batches_before) - (singles - singles_before) > 0, "no batch of 2+ formed"
    assert metric_value(text, "wacht_requests_total", method="Moderate", code="OK") >= 96
    assert metric_value(text, "wacht_request_duration_seconds_count", method="Moderate") >= 96
    model = wacht_server.server.state.default_model
    assert metric_value(text, "wacht_model_info", name=model, default="true") == 1


def test_overload_gives_resource_exhausted_and_recovers() -> None:
    require_model()
    config = make_config(batching={"max_queue_texts": 8, "max_batch_size": 4})
    with server_thread(config) as server, WachtClient(server.address, timeout=60) as c:

        def one(i: int) -> grpc.RpcError | None:
            try:
                c.moderate([SENTENCE.format(i * 8 + k) for k in range(8)])
            except grpc.RpcError as exc:
                return exc
            return None

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, range(32)))
        errors = [e for e in outcomes if e is not None]
        assert errors, "a tiny queue under 16 concurrent callers must refuse some calls"
        assert len(errors) < len(outcomes), "some calls must still succeed"
        for exc in errors:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            retry = [d for d in error_details(exc) if isinstance(d, error_details_pb2.RetryInfo)]
            assert retry and retry[0].retry_delay.ToTimedelta().total_seconds() > 0
        assert c.moderate(["calm again"]).results[0].id == "0"
        text = server.metrics_text()
        assert metric_value(text, "wacht_requests_total", code="RESOURCE_EXHAUSTED") == len(errors)


def test_client_cancellation_drops_queued_work() -> None:
    require_model()
    config = make_config(batching={"max_batch_size": 2, "max_batch_tokens": 256})
    with server_thread(config) as server:

        async def cancel_one() -> None:
            def batches() -> float:
                return metric_value(server.metrics_text(), "wacht_batch_size_count")

            before = await asyncio.to_thread(batches)
            async with AsyncWachtClient(server.address, timeout=60) as c:
                texts = [SENTENCE.format(i) * 4 for i in range(256)]
                call = c.moderation.Moderate(moderate_request(texts), timeout=60)
                while await asyncio.to_thread(batches) == before:  # its first batch has run
                    await asyncio.sleep(0.005)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                reply = await c.moderate(["after the cancel"])
                assert reply.results[0].id == "0"

        asyncio.run(cancel_one())
        wait_for(lambda: metric_value(server.metrics_text(), "wacht_dropped_texts_total") > 0, 10)
        text = server.metrics_text()
        assert metric_value(text, "wacht_dropped_texts_total", reason="cancelled") > 0
        assert metric_value(text, "wacht_requests_total", method="Moderate", code="CANCELLED") == 1


def test_two_models_each_with_its_own_batcher(tmp_path: Path) -> None:
    from wacht.service.runtime.model_dir import write_sha256sums

    model = require_model()
    second = tmp_path / "second"
    shutil.copytree(model, second)
    manifest = second / "manifest.yaml"
    lines = manifest.read_text().splitlines()
    lines = ["name: second" if line.startswith("name:") else line for line in lines]
    manifest.write_text("\n".join(lines) + "\n")
    write_sha256sums(second)
    with server_thread(make_config(models=[model, second])) as server:
        state = server.server.state
        first = state.default_model
        assert state.models[first].batcher is not state.models["second"].batcher
        with WachtClient(server.address, timeout=30) as c:
            infos = {m.name: m.is_default for m in c.list_models().models}
            assert infos == {first: True, "second": False}
            assert c.moderate(["hi"], model="second").model.name == "second"
            assert c.moderate(["hi"]).model.name == first
            assert c.analyze(["hi"], model="second").results[0].tasks


def test_sigterm_exits_within_grace_despite_an_open_stream(tmp_path: Path) -> None:
    require_model()
    process, port = start_subprocess({"WACHT_SHUTDOWN_GRACE_S": "1"}, tmp_path / "server.log")
    address = f"127.0.0.1:{port}"
    try:
        with WachtClient(address, timeout=60) as c:
            wait_for(lambda: _health_or_none(c) == SERVING, 90)
            hold = threading.Event()

            def messages():
                yield ["first"]
                hold.wait(30)  # keep the stream open

            replies = c.stream(messages())
            assert next(replies).sequence == 0
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
            assert time.monotonic() - started < 5
            with pytest.raises(grpc.RpcError):
                next(replies)
            hold.set()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
