"""`wacht serve` as a process with TLS and API keys: SIGHUP reloads the callers file and
the certificate (automatic checks effectively off: a one-hour interval for the keys)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import grpc
import pytest
from api_support import require_model, start_subprocess, wait_for
from tls_support import CA

from wacht.client import WachtClient
from wacht.service.security import generate_key, hash_key

pytestmark = pytest.mark.slow


def _ok(client: WachtClient) -> bool:
    try:
        client.list_categories(timeout=5)
        return True
    except grpc.RpcError:
        return False


def test_sighup_reloads_keys_and_certificate(tmp_path: Path) -> None:
    require_model()
    ca, rotated_ca = CA(tmp_path, "First CA"), CA(tmp_path, "Second CA")
    live = ca.issue("live", "localhost")
    rotated = rotated_ca.issue("rotated", "localhost")
    old_key, new_key = generate_key(), generate_key()
    callers = tmp_path / "callers.yaml"
    callers.write_text(json.dumps({"callers": [{"name": "a", "key_sha256": [hash_key(old_key)]}]}))
    env = {
        "WACHT_TLS__CERT_FILE": str(live.cert),
        "WACHT_TLS__KEY_FILE": str(live.key),
        "WACHT_AUTH__KEYS_FILE": str(callers),
        "WACHT_AUTH__RELOAD_INTERVAL_S": "3600",
        "WACHT_HEALTH_ADDRESS": "127.0.0.1:0",
    }
    process, port = start_subprocess(env, tmp_path / "server.log")
    address = f"127.0.0.1:{port}"
    tls = {"server_name": "localhost", "timeout": 10}
    try:
        with WachtClient(address, ca_file=ca.pem, api_key=old_key, **tls) as old:
            wait_for(lambda: _ok(old), 90)
            callers.write_text(
                json.dumps({"callers": [{"name": "a", "key_sha256": [hash_key(new_key)]}]})
            )
            for src, dst in ((rotated.cert, live.cert), (rotated.key, live.key)):
                shutil.copyfile(src, dst)
            # The certificate changed on disk: the next handshake would take it anyway;
            # the key file is only re-read on SIGHUP (one-hour interval).
            assert _ok(old)  # same connection, old key still loaded
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: not _ok(old), 10)
            with pytest.raises(grpc.RpcError) as err:
                old.list_categories(timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with WachtClient(address, ca_file=rotated_ca.pem, api_key=new_key, **tls) as new:
            assert new.moderate("hello").results
        log = (tmp_path / "server.log").read_text()
        assert "callers reloaded" in log and old_key not in log and new_key not in log
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
