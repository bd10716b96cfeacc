"""TLS and mTLS on the real server, with a CA made here; the plaintext health-only port;
certificate reload (file change and SIGHUP's reload()) with a call in flight."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from api_support import make_config, require_model, server_thread
from grpc_health.v1 import health_pb2
from tls_support import CA

from wacht.client import WachtClient, describe_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    ca, other = CA(root, "Wacht test CA"), CA(root, "Some other CA")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("server", "localhost"),
        "expired_server": ca.issue("expired-server", "localhost", expired=True),
        "client": ca.issue("client", "batch-job", server=False),
        "expired_client": ca.issue("expired-client", "batch-job", server=False, expired=True),
        "foreign_client": other.issue("foreign-client", "batch-job", server=False),
    }


def _tls_config(cert: Any, client_ca: Path | None = None) -> Any:
    return make_config(
        tls={"cert_file": cert.cert, "key_file": cert.key, "client_ca_file": client_ca},
        health_address="127.0.0.1:0",
    )


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Any]) -> Iterator[Any]:
    require_model()
    with server_thread(_tls_config(pki["server"])) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(pki: dict[str, Any]) -> Iterator[Any]:
    require_model()
    with server_thread(_tls_config(pki["server"], pki["ca"].pem)) as server:
        yield server


def _fails(address: str, **options: Any) -> grpc.RpcError:
    client = WachtClient(address, timeout=10, server_name="localhost", **options)
    with client, pytest.raises(grpc.RpcError) as err:
        client.moderate("hello")
    return err.value


def test_tls_call_and_plaintext_refused(tls_server: Any, pki: dict[str, Any]) -> None:
    with WachtClient(tls_server.address, ca_file=pki["ca"].pem, server_name="localhost") as c:
        assert len(c.moderate(["you are lovely", "you idiot"]).results) == 2
    # A plaintext client on the TLS port: the handshake never happens.
    plain = WachtClient(tls_server.address, timeout=10)
    with plain, pytest.raises(grpc.RpcError) as err:
        plain.moderate("hello")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_wrong_ca_is_unavailable_with_a_tls_hint(tls_server: Any, pki: dict[str, Any]) -> None:
    error = _fails(tls_server.address, ca_file=pki["other"].pem)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "TLS:" in describe_error(error)
    assert "not trusted" in describe_error(error)


def test_expired_server_certificate(pki: dict[str, Any]) -> None:
    require_model()
    with server_thread(_tls_config(pki["expired_server"])) as server:
        error = _fails(server.address, ca_file=pki["ca"].pem)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (error.details() or "")
    assert "expired" in describe_error(error)


def test_health_only_port_is_plaintext_and_serves_nothing_else(tls_server: Any) -> None:
    address = f"127.0.0.1:{tls_server.server.health_port}"
    with WachtClient(address, timeout=10) as client:
        assert client.health() == health_pb2.HealthCheckResponse.SERVING
        assert client.health("wacht.v1.Moderation") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            client.moderate("hello")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            client.list_models()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_mtls_client_certificate_accepted(mtls_server: Any, pki: dict[str, Any]) -> None:
    client_cert = pki["client"]
    with WachtClient(
        mtls_server.address, ca_file=pki["ca"].pem, cert_file=client_cert.cert,
        key_file=client_cert.key, server_name="localhost",
    ) as client:
        assert client.moderate("hello").results[0].id == "0"
    from api_support import metric_value

    # The certificate is not in a callers file: the caller is the fixed label "mtls".
    assert metric_value(mtls_server.metrics_text(), "wacht_caller_requests_total",
                        caller="mtls", code="OK") >= 1


@pytest.mark.parametrize("which", ["missing", "expired", "foreign"])
def test_mtls_rejects_bad_client_certificates(
    mtls_server: Any, pki: dict[str, Any], which: str
) -> None:
    options: dict[str, Any] = {"ca_file": pki["ca"].pem}
    if which != "missing":
        cert = pki[{"expired": "expired_client", "foreign": "foreign_client"}[which]]
        options.update(cert_file=cert.cert, key_file=cert.key)
    error = _fails(mtls_server.address, **options)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "TLS:" in describe_error(error), describe_error(error)


def test_mtls_subject_is_the_caller_identity(mtls_server: Any, pki: dict[str, Any]) -> None:
    """The server sees the verified subject (what a callers file `subject:` matches)."""
    from wacht.service.api import tls as api_tls

    seen: list[str | None] = []
    original = api_tls.peer_identity

    def spy(context: Any) -> str | None:
        seen.append(original(context))
        return seen[-1]

    import wacht.service.api.calls as calls

    calls.peer_identity = spy
    try:
        c = pki["client"]
        with WachtClient(mtls_server.address, ca_file=pki["ca"].pem, cert_file=c.cert,
                         key_file=c.key, server_name="localhost") as client:
            client.list_categories()
    finally:
        calls.peer_identity = original
    assert seen and seen[-1] is not None
    assert "CN=batch-job" in seen[-1] and "O=Wacht tests" in seen[-1]


def _replace_files(src: Any, dst: Any) -> None:
    for a, b in ((src.cert, dst.cert), (src.key, dst.key)):
        tmp = b.with_name(b.name + ".new")
        shutil.copyfile(a, tmp)
        os.replace(tmp, b)


def test_certificate_reload_keeps_inflight_call(tmp_path: Path, pki: dict[str, Any]) -> None:
    """Replace the certificate files under a running server: new connections get the new
    certificate (signed by a new CA), a stream opened before keeps going to its end."""
    require_model()
    live = pki["ca"].issue("live", "localhost")
    new_ca = CA(tmp_path, "Rotated CA")
    rotated = new_ca.issue("rotated", "localhost")
    with server_thread(_tls_config(live)) as server:
        old = WachtClient(server.address, ca_file=pki["ca"].pem, server_name="localhost")
        gate = threading.Event()
        release = threading.Event()

        def messages() -> Iterator[str]:
            yield "first message"
            gate.set()
            release.wait(30)
            yield "second message, after the reload"

        replies = old.stream(messages())
        first = next(replies)
        assert gate.wait(10)
        _replace_files(rotated, live)
        with WachtClient(server.address, ca_file=new_ca.pem, server_name="localhost") as fresh:
            deadline = time.monotonic() + 10
            while True:  # the fetcher runs at the next handshake
                try:
                    fresh.list_categories(timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        # The old CA no longer verifies new connections ...
        error = _fails(server.address, ca_file=pki["ca"].pem)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # ... and the stream opened before the reload finishes on its old connection.
        release.set()
        second = next(replies)
        assert first.response.results and second.response.results
        old.close()

        # SIGHUP (reload()) with a half-written pair (certificate without its key): the
        # server keeps the current certificate.
        shutil.copyfile(pki["server"].cert, live.cert)
        server.loop.call_soon_threadsafe(server.server.reload)
        with WachtClient(server.address, ca_file=new_ca.pem, server_name="localhost") as c:
            assert c.list_categories(timeout=5).categories


def test_cli_tls_options(tls_server: Any, pki: dict[str, Any], capsys: Any) -> None:
    from wacht.service.cli import main

    common = ["--address", tls_server.address, "--server-name", "localhost", "--timeout", "10"]
    assert main(["moderate", "hello", "--ca", str(pki["ca"].pem), *common]) == 0
    assert '"results"' in capsys.readouterr().out
    assert main(["moderate", "hello", "--ca", str(pki["other"].pem), *common]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "TLS:" in err
    health = ["health", "--address", f"127.0.0.1:{tls_server.server.health_port}"]
    assert main(health) == 0
    assert "SERVING" in capsys.readouterr().out
