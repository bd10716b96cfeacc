"""Pure logic of service/security: callers file, key lookup, token bucket, quotas, guard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wacht.service.security import (
    Guard,
    KeyStore,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    generate_key,
    hash_key,
)
from wacht.service.security.keys import KeysFileError, add_caller, parse_callers
from wacht.service.security.quotas import Quotas, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store(tmp_path: Path, callers: list[dict]) -> KeyStore:
    path = tmp_path / "callers.yaml"
    path.write_text(json.dumps({"callers": callers}))  # JSON is accepted too
    return KeyStore.load(path, check_interval_s=0)


def test_keys_are_random_and_stored_hashed(tmp_path: Path) -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith("wacht_") and len(a) > 40
    path = tmp_path / "callers.yaml"
    add_caller(path, {"name": "web", "key_sha256": [hash_key(a)]})
    text = path.read_text()
    assert a not in text and hash_key(a) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = KeyStore.load(path)
    assert store.by_key(a).name == "web" and store.by_key(b) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a b", "key_sha256": ["0" * 64]}, "callers[0].name"),
        ({"name": "a", "key_sha256": ["xyz"]}, "callers[0].key_sha256[0]"),
        ({"name": "a"}, "needs key_sha256 or subject"),
        ({"name": "a", "subject": "CN=a", "methods": ["Moderat"]}, "callers[0].methods[0]"),
        ({"name": "a", "subject": "CN=a", "texts_per_second": -1}, "texts_per_second"),
        ({"name": "a", "subject": "CN=a", "key": "plaintext"}, "unknown key(s) ['key']"),
    ],
)
def test_callers_file_errors_name_the_entry(entry: dict, message: str) -> None:
    with pytest.raises(KeysFileError, match=re.escape(message)):
        parse_callers({"callers": [entry]}, "callers.yaml")


def test_duplicate_names_and_hashes_are_refused() -> None:
    h = hash_key("k")
    with pytest.raises(KeysFileError, match="appears twice"):
        parse_callers({"callers": [{"name": "a", "key_sha256": [h]},
                                   {"name": "a", "subject": "CN=x"}]}, "f")
    with pytest.raises(KeysFileError, match="hash appears twice"):
        parse_callers({"callers": [{"name": "a", "key_sha256": [h]},
                                   {"name": "b", "key_sha256": [h]}]}, "f")


def test_authenticate(tmp_path: Path) -> None:
    key = generate_key()
    store = _store(tmp_path, [
        {"name": "web", "key_sha256": [hash_key(key)], "methods": ["Moderate"]},
        {"name": "batch", "subject": "CN=batch,O=x"},
    ])
    guard = Guard(store)
    assert guard.authenticate({"authorization": f"Bearer {key}"}, None).name == "web"
    assert guard.authenticate({"authorization": f"bearer  {key} "}, None).via == "key"
    assert guard.authenticate({}, "CN=batch,O=x").name == "batch"
    for metadata, peer, message in [
        ({}, None, "missing API key"),
        ({"authorization": "Bearer nope"}, None, "unknown API key"),
        ({"authorization": f"Basic {key}"}, None, "Bearer"),
        ({}, "CN=someone-else", "not a listed caller"),
    ]:
        with pytest.raises(Unauthenticated, match=message):
            guard.authenticate(metadata, peer)
    web = guard.authenticate({"authorization": f"Bearer {key}"}, None)
    guard.authorize(web, "Moderate")
    with pytest.raises(PermissionDenied, match="may not call Explain"):
        guard.authorize(web, "Explain")
    # Without a callers file everyone is anonymous (or "mtls" with a client certificate).
    assert Guard(None).authenticate({}, None).name == "anonymous"
    assert Guard(None).authenticate({}, "CN=x").name == "mtls"


def test_rotation_by_file_change(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    store = _store(tmp_path, [{"name": "web", "key_sha256": [hash_key(old)]}])
    guard = Guard(store)
    assert guard.authenticate({"authorization": f"Bearer {old}"}, None).name == "web"
    store.path.write_text(json.dumps(
        {"callers": [{"name": "web", "key_sha256": [hash_key(old), hash_key(new)]}]}))
    assert guard.authenticate({"authorization": f"Bearer {new}"}, None).name == "web"
    store.path.write_text(json.dumps({"callers": [{"name": "web", "key_sha256": [hash_key(new)]}]}))
    with pytest.raises(Unauthenticated):
        guard.authenticate({"authorization": f"Bearer {old}"}, None)
    # A broken file keeps the callers that were loaded.
    store.path.write_text("callers: [{name: 'x y'}]")
    assert guard.authenticate({"authorization": f"Bearer {new}"}, None).name == "web"


def test_token_bucket_refills_and_allows_one_large_request() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=20, clock=clock)
    assert bucket.take(15) == 0
    assert bucket.take(10) == pytest.approx(0.5)  # 5 left, 10 needed at 10/s
    clock.now += 0.5
    assert bucket.take(10) == 0
    # Larger than the bucket: admitted when full, the bucket goes into debt.
    clock.now += 10
    assert bucket.take(50) == 0
    assert bucket.take(1) == pytest.approx(3.1)


def test_quotas_concurrency_and_rate_per_caller() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    a1 = quotas.enter("a", 2)
    quotas.enter("a", 2)
    with pytest.raises(QuotaExceeded) as err:
        quotas.enter("a", 2)
    assert err.value.subject == "caller:a" and "2 concurrent" in err.value.description
    assert err.value.retry_after_s > 0
    quotas.enter("b", 2)  # another caller is not affected
    a1.release()
    a1.release()  # twice is harmless
    quotas.enter("a", 2)
    quotas.charge("a", 10, rate=10, burst=10)
    with pytest.raises(QuotaExceeded) as err:
        quotas.charge("a", 5, rate=10, burst=10)
    assert err.value.retry_after_s == pytest.approx(0.5)
    quotas.charge("b", 10, rate=10, burst=10)


def test_guard_charge_checks_models(tmp_path: Path) -> None:
    key = generate_key()
    store = _store(tmp_path, [{"name": "web", "key_sha256": [hash_key(key)],
                               "models": ["minilm-*"], "texts_per_second": 5}])
    guard = Guard(store)
    caller = guard.authenticate({"authorization": f"Bearer {key}"}, None)
    guard.charge(caller, ["minilm-moderation"], 5)
    with pytest.raises(PermissionDenied, match="usem"):
        guard.charge(caller, ["minilm-moderation", "usem-de"], 1)
    with pytest.raises(QuotaExceeded, match="5 texts/s"):
        guard.charge(caller, ["minilm-moderation"], 5)


def test_security_config_is_validated(tmp_path: Path) -> None:
    from wacht.service.config import ConfigError, load_config

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_config(None, env={"WACHT_TLS__CERT_FILE": str(cert)})
    with pytest.raises(ConfigError, match="tls.key_file: .* is not a file"):
        load_config(None, env={"WACHT_TLS__CERT_FILE": str(cert),
                               "WACHT_TLS__KEY_FILE": str(tmp_path / "missing.key")})
    with pytest.raises(ConfigError, match="auth.keys_file"):
        load_config(None, env={"WACHT_AUTH__KEYS_FILE": str(tmp_path / "nope.yaml")})
    with pytest.raises(ConfigError, match="health_address"):
        load_config(None, env={"WACHT_HEALTH_ADDRESS": "nohost"})
    config = load_config(None, env={"WACHT_TLS__CERT_FILE": str(cert),
                                    "WACHT_TLS__KEY_FILE": str(cert)})
    assert config.health_listen_address() == "127.0.0.1:50052"
    assert load_config(None, env={}).health_listen_address() == ""


def test_tls_files_are_checked(tmp_path: Path) -> None:
    from tls_support import CA

    from wacht.service.security.tls import CertificateFiles, TlsFilesError, load_material

    ca = CA(tmp_path)
    a, b = ca.issue("a", "localhost"), ca.issue("b", "localhost")
    assert load_material(a.cert, a.key, ca.pem).client_ca is not None
    with pytest.raises(TlsFilesError, match="does not match the certificate"):
        load_material(a.cert, b.key, None)
    with pytest.raises(TlsFilesError, match="tls.key_file .* cannot read"):
        load_material(a.cert, ca.pem.with_suffix(".missing"), None)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(TlsFilesError, match="tls.client_ca_file .* not a PEM file"):
        load_material(a.cert, a.key, garbage)
    files = CertificateFiles(a.cert, a.key)
    first = files.load()
    assert files.current() is None  # nothing changed
    a.cert.write_bytes(b.cert.read_bytes())  # key not rotated yet: keep the old pair
    assert files.current() is None and files.material == first
    a.key.write_bytes(b.key.read_bytes())
    assert files.current().cert_chain == b.cert.read_bytes()
