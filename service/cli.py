"""`wacht`: run the server, call it, and manage models.

wacht serve [--config FILE] [--http HOST:PORT]
wacht moderate "text" ... [--explain evidence|generative] [--policy NAME] [--spans]
wacht analyze "text" ... [--task NAME]
wacht health [--service NAME] [--watch]
wacht models list | info [NAME]
wacht models import|eval|build|export-hf ...   (the model factory, models.cli)
wacht keys add NAME --file CALLERS.yaml [--methods ...] [--texts-per-second N] ...
wacht keys hash < key

Client commands take --ca / --cert / --key (TLS, mTLS), --server-name, and an API key from
$WACHT_API_KEY or --api-key-file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from wacht.client import DEFAULT_ADDRESS
from wacht.service.front import Front, render

MODEL_FACTORY_COMMANDS = ("import", "eval", "build", "export-hf", "finetune", "calibrate")


def _print(message: Any) -> None:
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _client(args: argparse.Namespace) -> Any:
    """A WachtClient with the command's address, deadline, TLS options and API key."""
    from wacht.client import WachtClient

    key = os.environ.get("WACHT_API_KEY") or None
    if args.api_key_file:
        key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
    return WachtClient(
        args.address,
        timeout=args.timeout,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        tls=True if args.tls else None,
        server_name=args.server_name,
        api_key=key,
    )


def _keys(args: argparse.Namespace) -> int:
    from wacht.service.security.keys import KeysFileError, add_caller, generate_key, hash_key

    if args.keys_command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("wacht: give the key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    key = generate_key()
    entry: dict[str, Any] = {"name": args.name, "key_sha256": [hash_key(key)]}
    if args.methods:
        entry["methods"] = args.methods
    if args.models:
        entry["models"] = args.models
    if args.texts_per_second:
        entry["texts_per_second"] = args.texts_per_second
    if args.burst:
        entry["burst_texts"] = args.burst
    if args.max_concurrent:
        entry["max_concurrent_calls"] = args.max_concurrent
    try:
        add_caller(Path(args.file), entry)
    except (KeysFileError, OSError) as exc:
        print(f"wacht: {exc}", file=sys.stderr)
        return 2
    print(f"added a key for {args.name!r} to {args.file}; it is shown only now:", file=sys.stderr)
    print(key)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from wacht.service.config import ConfigError, load_config
    from wacht.service.observability.logging import configure_logging
    from wacht.service.security.keys import KeysFileError
    from wacht.service.security.tls import TlsFilesError

    env = dict(os.environ)
    if args.http:  # the flag wins over the file and WACHT_HTTP__ADDRESS, and is validated alike
        env["WACHT_HTTP__ADDRESS"] = args.http
    try:
        config = load_config(args.config, env=env)
    except ConfigError as exc:
        print(f"wacht: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format, config.log.raw_text, config.worker)
    if config.workers > 1 and not config.worker:
        from wacht.service.api.workers import serve_workers

        return serve_workers(config, env, args.config)
    from wacht.service.api.server import serve
    from wacht.service.observability.loopload import new_event_loop

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(config))
    except (KeysFileError, TlsFilesError) as exc:
        print(f"wacht: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wacht: {exc}", file=sys.stderr)
        return 1
    return 0


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    return texts


def _moderate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(
            client.moderate(
                _texts(args),
                model=args.model,
                language=args.language,
                policy=args.policy,
                explanation=args.explain,
                evidence_spans=args.spans,
                raw_scores=args.raw,
                categories=args.category or (),
            )
        )
    return 0


def _analyze(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.analyze(
            _texts(args), model=args.model, tasks=args.task or (), language=args.language
        ))
    return 0


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2

    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    with _client(args) as client:
        if args.watch:
            for status in client.watch_health(args.service, timeout=None, wait_for_ready=True):
                print(name(status), flush=True)
            return 0
        status = client.health(args.service)
        print(name(status))
        return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def _front_config(args: argparse.Namespace) -> int:
    front = Front(args.upstream, args.listen, args.limit, args.per_caller,
                  args.retry_after_ms, args.max_body_mb, args.run_dir, args.workers,
                  args.tls_cert, args.tls_key, args.max_connection_age_s)
    try:
        sys.stdout.write(render(front))
    except ValueError as exc:
        print(f"wacht front-config: {exc}", file=sys.stderr)
        return 2
    return 0


def _model_factory(argv: list[str]) -> int:
    from wacht.models.cli import (
        main as factory_main,  # the model factory (some commands need torch)
    )

    return int(factory_main(argv) or 0)


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.models_command == "list":
            _print(client.list_models())
        else:
            _print(client.model_info(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wacht", description="Wacht moderation service")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=DEFAULT_ADDRESS, help="server host:port")
        p.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
        p.add_argument("--ca", help="CA bundle (PEM) to verify the server: turns TLS on")
        p.add_argument("--tls", action="store_true", help="TLS with the system CA roots")
        p.add_argument("--cert", help="client certificate (PEM), for mTLS")
        p.add_argument("--key", help="client private key (PEM), for mTLS")
        p.add_argument("--server-name", help="expected name in the server certificate")
        p.add_argument("--api-key-file", help="file holding the API key (else $WACHT_API_KEY)")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="YAML config file (default: $WACHT_CONFIG, then defaults)")
    serve.add_argument(
        "--http", metavar="HOST:PORT", help="also serve HTTP/JSON here (overrides http.address)"
    )

    moderate = sub.add_parser("moderate", help="moderate texts (prints JSON)")
    client_args(moderate)
    moderate.add_argument("texts", nargs="*", help="texts; none or '-' reads lines from stdin")
    moderate.add_argument("--explain", choices=("none", "evidence", "generative"), default="none")
    moderate.add_argument("--policy", default="")
    moderate.add_argument("--model", default="", help="pin a model (default: route by language)")
    moderate.add_argument("--language", default="", help="language of every text (default: detect)")
    moderate.add_argument("--spans", action="store_true", help="compute evidence spans")
    moderate.add_argument("--raw", action="store_true", help="include raw label scores")
    moderate.add_argument("--category", action="append", help="report only this category")

    analyze = sub.add_parser("analyze", help="raw model scores per task (prints JSON)")
    client_args(analyze)
    analyze.add_argument("texts", nargs="*")
    analyze.add_argument("--model", default="", help="pin a model (default: route by language)")
    analyze.add_argument("--language", default="", help="language of every text (default: detect)")
    analyze.add_argument("--task", action="append", help="only this task")

    health = sub.add_parser("health", help="health status; exit 0 when SERVING")
    client_args(health)
    health.add_argument("--service", default="", help="fully-qualified service name")
    health.add_argument("--watch", action="store_true", help="print every status change")

    models = sub.add_parser("models", help="served models; model factory commands")
    msub = models.add_subparsers(dest="models_command", required=True)
    client_args(msub.add_parser("list", help="list served models"))
    info = msub.add_parser("info", help="one model's card, limits, checksums")
    client_args(info)
    info.add_argument("name", nargs="?", default="")
    for name in MODEL_FACTORY_COMMANDS:
        msub.add_parser(name, help=f"model factory: {name} (see models.cli)", add_help=False)

    front = sub.add_parser(
        "front-config",
        help="print the nginx.conf of an admission front for one Wacht process "
             "(refuses scoring calls past a concurrency limit, in C; see service/front.py)",
    )
    defaults = Front()
    front.add_argument("--upstream", default=defaults.upstream, help="the Wacht process")
    front.add_argument("--listen", default=defaults.listen, help="where clients connect")
    front.add_argument("--limit", type=int, default=defaults.limit,
                       help="scoring calls in flight to Wacht (about 8 per core)")
    front.add_argument("--per-caller", type=int, default=defaults.per_caller,
                       help="of them, one API key at most (0 = no per-caller limit)")
    front.add_argument("--retry-after-ms", type=int, default=defaults.retry_after_ms)
    front.add_argument("--max-body-mb", type=int, default=defaults.max_body_mb)
    front.add_argument("--run-dir", default=defaults.run_dir,
                       help="an existing directory for nginx's pid and temporary files")
    front.add_argument("--workers", type=int, default=defaults.workers)
    front.add_argument("--tls-cert", default="", help="PEM certificate: TLS for the clients")
    front.add_argument("--tls-key", default="", help="its PEM private key")
    front.add_argument("--max-connection-age-s", type=int, default=0,
                       help="close each client connection after this long (0 = never)")

    keys = sub.add_parser("keys", help="API keys in a callers file (stored as sha256)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    add = ksub.add_parser("add", help="make a key for NAME, store its hash, print it once")
    add.add_argument("name")
    add.add_argument("--file", required=True, help="callers file (created if missing)")
    add.add_argument("--methods", nargs="+", help="allowed methods (default: all)")
    add.add_argument("--models", nargs="+", help="allowed model names (default: all)")
    add.add_argument("--texts-per-second", type=float, default=0, help="0 = no limit")
    add.add_argument("--burst", type=float, default=0, help="bucket size in texts")
    add.add_argument("--max-concurrent", type=int, default=0, help="0 = no limit")
    ksub.add_parser("hash", help="print the sha256 of the key read from stdin")
    return parser


def main(argv: list[str] | None = None) -> int:
    import grpc

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"] and argv[1:2] and argv[1] in MODEL_FACTORY_COMMANDS:
        return _model_factory(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "moderate":
            return _moderate(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "health":
            return _health(args)
        if args.command == "front-config":
            return _front_config(args)
        if args.command == "keys":
            return _keys(args)
        return _models(args)
    except grpc.RpcError as exc:
        from wacht.client import describe_error, error_details

        print(f"wacht: {describe_error(exc)}", file=sys.stderr)
        for detail in error_details(exc):
            print(f"  {type(detail).__name__}: {detail}".rstrip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
