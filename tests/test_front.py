"""The admission front (service/front.py): its generated nginx configuration, and real nginx
in front of a real server: calls pass unchanged, scoring calls past the limit get Wacht's own
RESOURCE_EXHAUSTED before reaching it, one flooding API key leaves room for another, a dead
upstream is UNAVAILABLE. nginx comes from Debian (`make test` installs nginx-light where
apt-get works); without it the nginx tests skip."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections import Counter
from pathlib import Path

import grpc
import pytest
from api_support import make_config, metric_value, require_model, server_thread
from google.rpc import error_details_pb2, status_pb2

from bench.front import NginxFront, nginx
from wacht.client import AsyncWachtClient, WachtClient, error_details
from wacht.service.cli import main as cli_main
from wacht.service.front import REFUSAL, Front, render, scoring_paths
from wacht.service.security import generate_key, hash_key

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["thanks, that was helpful", "you are an idiot", "lovely weather in the park"]
needs_nginx = pytest.mark.skipif(
    nginx() is None, reason="nginx is not installed (`make test` installs nginx-light where "
                            "apt-get works)")


def _header(config: str, name: str) -> str:
    line = next(line for line in config.splitlines() if f"add_header {name} " in line)
    return line.split(f"add_header {name} ", 1)[1].split(" always;")[0].strip('"')


def test_the_config_limits_exactly_the_scoring_methods_with_wachts_own_refusal() -> None:
    assert scoring_paths() == ["/wacht.v1.Analysis/Analyze", "/wacht.v1.Moderation/Explain",
                               "/wacht.v1.Moderation/Moderate"]
    config = render(Front(upstream="10.0.0.1:7", listen="0.0.0.0:9", limit=5, per_caller=3,
                          retry_after_ms=80, max_body_mb=16))
    assert "server 10.0.0.1:7;" in config and "listen 0.0.0.0:9 http2;" in config
    assert "limit_conn wacht_all 5;" in config and "limit_conn wacht_caller 3;" in config
    assert "client_max_body_size 16m;" in config and "access_log off;" in config
    # without it nginx closes each client connection after 1,000 calls (p99 of 1.2 s under a
    # flood while clients reconnect, measured)
    assert config.count("keepalive_requests 1000000;") == 2
    assert r"location ~ ^(/wacht\.v1\.Analysis/Analyze|" in config
    status = status_pb2.Status.FromString(
        base64.b64decode(_header(config, "grpc-status-details-bin")))
    assert (status.code, status.message) == (8, REFUSAL)
    assert (_header(config, "grpc-status"), _header(config, "grpc-message")) == ("8", REFUSAL)
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(0.08)
    assert "# no per-caller limit" in render(Front(per_caller=0))
    with pytest.raises(ValueError):
        render(Front(limit=0))


def test_the_cli_prints_it_and_the_committed_example_is_current(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["front-config", "--upstream", "127.0.0.1:50061", "--limit", "3"]) == 0
    assert "limit_conn wacht_all 3;" in capsys.readouterr().out
    assert cli_main(["front-config", "--limit", "0"]) == 2
    example = REPO / "deploy" / "front" / "nginx.conf"
    assert example.read_text() == render(Front()), (
        "regenerate: wacht front-config > deploy/front/nginx.conf")


@needs_nginx
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    from tls_support import CA

    issued = CA(tmp_path / "pki").issue("front", "localhost")
    conf = tmp_path / "nginx.conf"
    for front in (Front(listen="127.0.0.1:1", run_dir=str(tmp_path)),
                  Front(listen="127.0.0.1:1", run_dir=str(tmp_path), tls_cert=str(issued.cert),
                        tls_key=str(issued.key), max_connection_age_s=300, per_caller=0)):
        conf.write_text(render(front))
        checked = subprocess.run([nginx(), "-t", "-c", str(conf), "-e", "stderr"],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    conf.write_text(render(Front(run_dir=str(tmp_path))).replace("limit_conn wacht_all",
                                                                   "limit_conn no_such_zone"))
    broken = subprocess.run([nginx(), "-t", "-c", str(conf), "-e", "stderr"],
                            capture_output=True, text=True)
    assert broken.returncode != 0  # the check can fail


@needs_nginx
def test_calls_pass_through_the_front_unchanged() -> None:
    require_model()
    with server_thread(make_config()) as server, NginxFront(server.address) as front:
        with WachtClient(server.address, timeout=30) as direct, \
                WachtClient(front.address, timeout=30) as proxied:
            assert proxied.health() == 1
            a, b = direct.moderate(TEXTS), proxied.moderate(TEXTS)
            assert [r.flagged for r in a.results] == [r.flagged for r in b.results]
            assert [c.score for r in a.results for c in r.categories] == pytest.approx(
                [c.score for r in b.results for c in r.categories])
            assert len(proxied.analyze(TEXTS).results) == 3
            assert proxied.list_models().models
            # 1.9 MB, past nginx's 1 MB default (one window a text: cheap to score)
            big = ["lovely weather in the park " * 700] * 100
            assert len(proxied.moderate(big, truncation="head").results) == 100
            _, call = proxied.moderation.Moderate.with_call(
                proxied_request(), metadata=(("x-request-id", "through-the-front"),))
            assert ("x-request-id", "through-the-front") in call.trailing_metadata()
            with pytest.raises(grpc.RpcError) as bad:
                proxied.moderate(["x"], policy="no-such-policy")
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        async def stream() -> int:
            async with AsyncWachtClient(front.address, timeout=30) as client:
                return len([r async for r in client.stream(TEXTS * 5)])

        assert asyncio.run(stream()) == 15


def proxied_request():  # noqa: ANN201 - the generated message type
    from wacht.client import moderate_request

    return moderate_request(["hello there"])


async def _burst(address: str, calls: int, key: str | None = None) -> list[tuple[str, float]]:
    clients = [AsyncWachtClient(address, own_connection=True, api_key=key) for _ in range(4)]

    async def one(i: int) -> tuple[str, float]:
        try:
            await clients[i % 4].moderate([TEXTS[i % 3]], timeout=30)
            return "OK", 0.0
        except grpc.aio.AioRpcError as exc:
            retry = [d.retry_delay.ToTimedelta().total_seconds() for d in error_details(exc)
                     if isinstance(d, error_details_pb2.RetryInfo)]
            assert exc.details() == REFUSAL or exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
            return exc.code().name, retry[0] if retry else -1.0

    try:
        return list(await asyncio.gather(*(one(i) for i in range(calls))))
    finally:
        for client in clients:
            await client.close()


@needs_nginx
def test_scoring_calls_past_the_limit_are_refused_before_reaching_wacht() -> None:
    require_model()
    # no wait bound in Wacht: every refusal here is the front's
    config = make_config(max_loop_busy=0.0, batching={"max_queue_wait_ms": 0})
    with server_thread(config) as server, NginxFront(server.address, limit=2) as front:
        outcomes = asyncio.run(_burst(front.address, 300))
        codes = Counter(code for code, _ in outcomes)
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert {retry for code, retry in outcomes if code != "OK"} == {0.05}
        text = server.metrics_text()
        assert metric_value(text, "wacht_requests_total", method="Moderate") == codes["OK"]
        with WachtClient(front.address, timeout=30) as client:  # calm again: served
            assert client.moderate(["after the burst"]).results[0].id == "0"


@needs_nginx
def test_one_flooding_key_leaves_room_for_another(tmp_path: Path) -> None:
    require_model()
    keys = {"flood": generate_key(), "calm": generate_key()}
    callers = tmp_path / "callers.json"
    callers.write_text(json.dumps({"callers": [
        {"name": name, "key_sha256": [hash_key(key)]} for name, key in keys.items()]}))
    config = make_config(max_loop_busy=0.0, batching={"max_queue_wait_ms": 0},
                         auth={"keys_file": callers})
    with server_thread(config) as server, \
            NginxFront(server.address, limit=6, per_caller=3) as front:

        async def run() -> tuple[Counter[str], list[str]]:
            flood = asyncio.create_task(_burst(front.address, 600, keys["flood"]))
            calm: list[str] = []
            async with AsyncWachtClient(front.address, api_key=keys["calm"]) as client:
                while not flood.done():
                    try:
                        await client.moderate([TEXTS[0]], timeout=30)
                        calm.append("OK")
                    except grpc.aio.AioRpcError as exc:
                        calm.append(exc.code().name)
            return Counter(code for code, _ in await flood), calm

        flooded, calm = asyncio.run(run())
        assert flooded["RESOURCE_EXHAUSTED"] > 0, flooded
        assert calm and set(calm) == {"OK"}, calm


@needs_nginx
def test_the_front_terminates_tls_for_api_key_callers(tmp_path: Path) -> None:
    from tls_support import CA

    require_model()
    ca = CA(tmp_path / "pki")
    issued = ca.issue("front", "localhost")
    key = generate_key()
    callers = tmp_path / "callers.json"
    callers.write_text(json.dumps({"callers": [{"name": "app", "key_sha256": [hash_key(key)]}]}))
    config = make_config(auth={"keys_file": callers})
    with server_thread(config) as server, \
            NginxFront(server.address, tls=(str(issued.cert), str(issued.key))) as front:
        with WachtClient(front.address, timeout=30, ca_file=ca.pem, server_name="localhost",
                         api_key=key) as client:
            assert client.moderate(TEXTS).results[2].id == "2"
        with WachtClient(front.address, timeout=30, ca_file=ca.pem,
                         server_name="localhost") as keyless:
            with pytest.raises(grpc.RpcError) as caught:
                keyless.moderate(TEXTS)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with WachtClient(front.address, timeout=5, api_key=key) as plaintext, \
                pytest.raises(grpc.RpcError):  # the front speaks TLS only
            plaintext.moderate(TEXTS)
    with pytest.raises(ValueError):
        render(Front(tls_cert="only-a-cert.pem"))


@needs_nginx
def test_an_unreachable_wacht_is_unavailable() -> None:
    from bench.load import _free_port

    with NginxFront(f"127.0.0.1:{_free_port()}") as front, \
            WachtClient(front.address, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.list_models()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
