"""`wacht`: run the server, call it, and manage models.

wacht serve [--config FILE] [--http HOST:PORT]
wacht moderate "text" ... [--explain evidence|generative] [--policy NAME] [--spans]
wacht analyze "text" ... [--task NAME]
wacht health [--service NAME] [--watch]
wacht models list | info [NAME]
wacht models import|eval|build|export-hf ...   (the model factory, models.cli)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from wacht.client import DEFAULT_ADDRESS

MODEL_FACTORY_COMMANDS = ("import", "eval", "build", "export-hf")


def _print(message: Any) -> None:
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _serve(args: argparse.Namespace) -> int:
    from wacht.service.config import ConfigError, load_config
    from wacht.service.observability.logging import configure_logging

    env = dict(os.environ)
    if args.http:  # the flag wins over the file and WACHT_HTTP__ADDRESS, and is validated alike
        env["WACHT_HTTP__ADDRESS"] = args.http
    try:
        config = load_config(args.config, env=env)
    except ConfigError as exc:
        print(f"wacht: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format, config.log.raw_text)
    from wacht.service.api.server import serve

    try:
        asyncio.run(serve(config))
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
    from wacht.client import WachtClient

    with WachtClient(args.address, timeout=args.timeout) as client:
        _print(
            client.moderate(
                _texts(args),
                model=args.model,
                policy=args.policy,
                explanation=args.explain,
                evidence_spans=args.spans,
                raw_scores=args.raw,
                categories=args.category or (),
            )
        )
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from wacht.client import WachtClient

    with WachtClient(args.address, timeout=args.timeout) as client:
        _print(client.analyze(_texts(args), model=args.model, tasks=args.task or ()))
    return 0


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2

    from wacht.client import WachtClient

    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    with WachtClient(args.address, timeout=args.timeout) as client:
        if args.watch:
            for status in client.watch_health(args.service, timeout=None, wait_for_ready=True):
                print(name(status), flush=True)
            return 0
        status = client.health(args.service)
        print(name(status))
        return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def _model_factory(argv: list[str]) -> int:
    from wacht.models.cli import (
        main as factory_main,  # the model factory (some commands need torch)
    )

    return int(factory_main(argv) or 0)


def _models(args: argparse.Namespace) -> int:
    from wacht.client import WachtClient

    with WachtClient(args.address, timeout=args.timeout) as client:
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
    moderate.add_argument("--model", default="")
    moderate.add_argument("--spans", action="store_true", help="compute evidence spans")
    moderate.add_argument("--raw", action="store_true", help="include raw label scores")
    moderate.add_argument("--category", action="append", help="report only this category")

    analyze = sub.add_parser("analyze", help="raw model scores per task (prints JSON)")
    client_args(analyze)
    analyze.add_argument("texts", nargs="*")
    analyze.add_argument("--model", default="")
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
        return _models(args)
    except grpc.RpcError as exc:
        from wacht.client import error_details

        print(f"wacht: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        for detail in error_details(exc):
            print(f"  {type(detail).__name__}: {detail}".rstrip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
