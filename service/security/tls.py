"""TLS material from files, re-read when a file changes or on `request_reload()` (SIGHUP).

Transport-neutral: `CertificateFiles.current()` returns the PEM bytes to use now, or None
when nothing changed since the last call; each front end turns them into its own
credentials (gRPC: service/api/tls.py). A new set is only taken when the key matches the
certificate and every file parses, so a half-written rotation (certificate replaced, key
not yet) keeps the previous pair and logs why; the next change is picked up as usual.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from wacht.service.observability.logging import get_logger

log = get_logger("wacht.security.tls")


class TlsFilesError(ValueError):
    """A certificate, key or CA file is missing or invalid; the message names it."""


@dataclass(frozen=True)
class TlsMaterial:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None  # set: mTLS, a client certificate signed by it is required
    not_after: str = ""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{what} {path}: cannot read: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TlsFilesError(f"{what} {path}: not a PEM file")
    return data


def load_material(cert: Path, key: Path, client_ca: Path | None) -> TlsMaterial:
    """Read and check the files: the key must belong to the first certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain = _read(cert, "tls.cert_file")
    private = _read(key, "tls.key_file")
    ca = _read(client_ca, "tls.client_ca_file") if client_ca is not None else None
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError as exc:
        raise TlsFilesError(f"tls.cert_file {cert}: not a PEM certificate: {exc}") from exc
    try:
        loaded_key = serialization.load_pem_private_key(private, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsFilesError(f"tls.key_file {key}: not an unencrypted PEM key: {exc}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != loaded_key.public_key().public_bytes(
        der, spki
    ):
        raise TlsFilesError(f"tls.key_file {key}: does not match the certificate {cert}")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as exc:
            raise TlsFilesError(f"tls.client_ca_file {client_ca}: not PEM certificates") from exc
    return TlsMaterial(chain, private, ca, leaf.not_valid_after_utc.isoformat())


@dataclass
class CertificateFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None
    material: TlsMaterial | None = None
    _stamps: tuple[tuple[int, int], ...] = ()
    _force: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca) if p is not None]

    def _file_stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self.paths():
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def load(self) -> TlsMaterial:
        """The first load: errors raise (the server does not start without its certificate)."""
        with self._lock:
            self._stamps = self._file_stamps()
            self.material = load_material(self.cert, self.key, self.client_ca)
        log.info("tls certificate loaded", cert=str(self.cert), not_after=self.material.not_after,
                 mtls=self.client_ca is not None)
        return self.material

    def request_reload(self) -> None:
        self._force = True

    def current(self) -> TlsMaterial | None:
        """New material if a file changed (or a reload was requested) and the new set is
        valid; None otherwise (keep using what you have)."""
        stamps = self._file_stamps()
        if stamps == self._stamps and not self._force:
            return None
        with self._lock:
            self._force = False
            self._stamps = stamps
            try:
                material = load_material(self.cert, self.key, self.client_ca)
            except TlsFilesError as exc:
                log.error("tls files rejected; keeping the previous certificate", error=str(exc))
                return None
            if material == self.material:
                return None
            self.material = material
        log.info("tls certificate reloaded", cert=str(self.cert), not_after=material.not_after)
        return material
