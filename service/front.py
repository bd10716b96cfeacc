"""The admission front: an nginx configuration that refuses scoring calls past a concurrency
limit in C, before they reach Wacht's Python process.

Why: however early Wacht refuses a call (service/api/intake.py refuses it before reading it),
grpc.aio's own per-call work on the event loop costs a few hundred microseconds. Under a flood
of the smallest calls the refusals then eat the model's CPU: the OK share of capacity is about
1 - (factor - 1) x capacity x refusal cost, so at 5x and ~430 one-text calls/s per core it is
~55%, whatever Wacht does (bench/README.md). nginx refuses a call in tens of microseconds, so
in front of each Wacht process it keeps the OK throughput near capacity, and the OK latency
near the unloaded one, at any overload.

What it does, per Wacht process (a sidecar in the same pod, or beside `wacht serve`):
- scoring calls (the methods Wacht sheds, calls.SHEDDING) in flight to Wacht are limited to
  `limit`, and those of one API key to `per_caller` (a flooding caller leaves the others
  room); a call past either gets RESOURCE_EXHAUSTED at once, with the same message and
  RetryInfo details Wacht's own refusals carry (errors.resource_exhausted);
- every other call (streams, health, reflection, model listings) passes unlimited;
- Wacht unreachable -> UNAVAILABLE (which the shipped client service config retries);
- no access log (no client data on disk); bodies up to Wacht's own message limit;
- optionally TLS for the clients (`tls_cert`, `tls_key`), Wacht behind it on loopback in
  clear. nginx reads the certificate at start and on `nginx -s reload` (Wacht alone reloads
  it when the file changes), and Wacht's mTLS caller identities do not pass a proxy: behind
  the front, callers are identified by API key.

Excess calls are refused rather than queued: a queue in front would hold every admitted call
for the queue's whole bound under overload. Size `limit` by Little's law: calls in flight =
throughput x the latency you accept (about 8 per core for one-text calls on the reference
host: OK p99 9.2x the unloaded p99 at a 5x overload). Concurrent callers beyond it are
refused with a short retry hint even without overload: the trade of a hard limit.

    wacht front-config --upstream 127.0.0.1:50061 --listen 0.0.0.0:50051 --limit 8 > nginx.conf
    nginx -c "$PWD/nginx.conf"
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

REFUSAL = "the server is at its concurrency limit; retry later"


@dataclass(frozen=True)
class Front:
    upstream: str = "127.0.0.1:50061"  # the Wacht process (host:port, plaintext)
    listen: str = "0.0.0.0:50051"  # where clients connect
    limit: int = 8  # scoring calls in flight to Wacht
    per_caller: int = 6  # of them one API key may hold; 0 = only `limit`
    retry_after_ms: int = 50  # RetryInfo of a refusal
    max_body_mb: int = 64  # largest request body (Wacht's own message limit)
    run_dir: str = "/tmp/wacht-front"  # pid file and nginx's temporary files
    workers: int = 1  # nginx worker processes (limits are shared by all)
    tls_cert: str = ""  # PEM files: TLS for clients (terminated here; Wacht behind in clear)
    tls_key: str = ""
    # Close each client connection after this long (GOAWAY; calls finish), so clients
    # re-resolve and spread over new replicas, as Wacht's own max_connection_age_s; 0 = never
    max_connection_age_s: int = 0


def scoring_paths() -> list[str]:
    """The gRPC paths of the methods Wacht sheds under overload."""
    from wacht.service.api.calls import SHEDDING
    from wacht.v1 import analysis_pb2, moderation_pb2

    paths = []
    for file in (moderation_pb2.DESCRIPTOR, analysis_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            paths += [f"/{service.full_name}/{m.name}" for m in service.methods
                      if m.name in SHEDDING]
    return sorted(paths)


def _status_headers(code: int, message: str, retry_after_s: float | None) -> str:
    """nginx `add_header` lines of a trailers-only gRPC status."""
    lines = [f"add_header grpc-status {code} always;",
             f'add_header grpc-message "{message}" always;']
    if retry_after_s is not None:
        from wacht.service.api import errors

        error = errors.resource_exhausted(message, retry_after_s)
        details = dict(error.to_grpc_status().trailing_metadata)["grpc-status-details-bin"]
        encoded = base64.b64encode(details).decode()
        lines.append(f'add_header grpc-status-details-bin "{encoded}" always;')
    return "\n            ".join(lines)


def render(front: Front) -> str:
    """The nginx.conf of `front`."""
    if front.limit < 1 or front.per_caller < 0 or front.retry_after_ms < 1:
        raise ValueError("limit >= 1, per_caller >= 0 and retry_after_ms >= 1 are needed")
    if bool(front.tls_cert) != bool(front.tls_key):
        raise ValueError("TLS needs both a certificate and its key")
    tls = (f"""listen {front.listen} ssl http2;
        ssl_certificate {front.tls_cert};
        ssl_certificate_key {front.tls_key};
        ssl_protocols TLSv1.2 TLSv1.3;""" if front.tls_cert
           else f"listen {front.listen} http2;")
    scoring = "|".join(re.escape(p) for p in scoring_paths())
    per_caller = (f"limit_conn wacht_caller {front.per_caller};" if front.per_caller
                  else "# no per-caller limit")
    exhausted = _status_headers(8, REFUSAL, front.retry_after_ms / 1000)
    unavailable = _status_headers(14, "the server behind the admission front is unreachable",
                                  None)
    run = front.run_dir.rstrip("/")
    age = (f"\n        keepalive_time {front.max_connection_age_s}s;"
           if front.max_connection_age_s else "")
    return f"""# Wacht's admission front (generated by `wacht front-config`; see service/front.py).
# Scoring calls past {front.limit} in flight ({front.per_caller or 'no limit'} per API key) get
# RESOURCE_EXHAUSTED with RetryInfo {front.retry_after_ms} ms, in C, before Wacht sees them.
worker_processes {front.workers};
pid {run}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    limit_conn_zone $server_name zone=wacht_all:1m;
    limit_conn_zone $http_authorization zone=wacht_caller:10m;
    limit_conn_status 429;
    limit_conn_log_level info;
    upstream wacht {{
        server {front.upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        {tls}
        server_name wacht;
        http2_max_concurrent_streams 4096;
        # nginx closes a client connection after 1,000 calls by default: every gRPC client
        # would reconnect every few seconds under load, its calls waiting meanwhile
        keepalive_requests 1000000;{age}
        client_max_body_size {front.max_body_mb}m;
        grpc_read_timeout 3600s;
        grpc_send_timeout 3600s;
        error_page 429 = @exhausted;
        error_page 502 503 504 = @unavailable;
        location ~ ^({scoring})$ {{
            limit_conn wacht_all {front.limit};
            {per_caller}
            grpc_pass grpc://wacht;
        }}
        location / {{
            grpc_pass grpc://wacht;
        }}
        location @exhausted {{
            default_type application/grpc;
            {exhausted}
            return 204;
        }}
        location @unavailable {{
            default_type application/grpc;
            {unavailable}
            return 204;
        }}
    }}
}}
"""
