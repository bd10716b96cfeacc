"""gRPC server credentials over security.tls: certificates reload on the next handshake.

grpc asks the fetcher for a new certificate configuration at every TLS handshake; it
answers None (keep the current one) unless a file changed or SIGHUP asked for a reload.
Connections already open keep their session, so an in-flight call survives a reload."""

from __future__ import annotations

import grpc

from wacht.service.security.tls import CertificateFiles, TlsMaterial


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
    )


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    material = files.load()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        new = files.current()
        return None if new is None else _configuration(new)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(material),
        fetch,
        require_client_authentication=material.client_ca is not None,
    )


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's subject (mTLS), else None."""
    auth = context.auth_context() or {}
    if not auth.get("transport_security_type"):
        return None
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            value = values[0]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None
