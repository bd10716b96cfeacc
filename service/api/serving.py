"""The served models: load them, assemble the routing core over them, and swap one in
without a restart.

One implementation serves the start, the directory watcher and SIGHUP. A model directory
is verified against its SHA256SUMS, loaded and warmed up off the event loop
(`Engine.load`, which also checks the manifest against the graph); its batcher, policy
store and moderator are built and started beside the running ones; then the models map,
the default model and the language-routing `Core` are replaced in one step on the event
loop (no await in between), so every call sees either the old set or the new one.

A call keeps the `Target` it started with, so one in flight finishes on the old model;
the old batcher and policy watcher are closed once every call that started before the swap
has ended (at most RETIRE_TIMEOUT_S later; the batcher still finishes what it admitted).
A directory that fails (checksums, manifest, ONNX load, labels vs outputs, a model name
served twice, routing that no longer resolves) is refused with one `model_reload_refused`
log line and `wacht_model_reloads_total{result="refused"}`; the old model keeps serving and
health is left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wacht.service.api.state import ServedModel, ServingState
from wacht.service.batching.batcher import Batcher
from wacht.service.config import Config
from wacht.service.moderation.core import Core
from wacht.service.moderation.moderator import Moderator
from wacht.service.moderation.policies import PolicyStore, manifest_thresholds
from wacht.service.moderation.routing import Router, RoutingTable
from wacht.service.observability.logging import get_logger
from wacht.service.observability.metrics import Metrics
from wacht.service.runtime.engine import Engine

log = get_logger("wacht.serving")

# Longest wait for the calls that started before a swap; then the old model is closed anyway
# (a stream opened before the swap sends its later messages to the new model).
RETIRE_TIMEOUT_S = 120.0

# (directory inode, (relative path, inode, mtime_ns, size) of every file): a replaced
# directory (renamed into place) or a rewritten file changes it.
Fingerprint = tuple[int, tuple[tuple[str, int, int, int], ...]]
GONE = (-1, ())  # the fingerprint of a directory that is not there


def fingerprint(path: Path) -> Fingerprint:
    try:
        files = []
        for file in sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                stat = file.stat()
                files.append((str(file.relative_to(path)), stat.st_ino, stat.st_mtime_ns,
                              stat.st_size))
        return path.stat().st_ino, tuple(files)
    except OSError:
        return GONE


def model_directories(config: Config) -> list[Path]:
    """`models`, then every subdirectory of `models_dir` holding a manifest.yaml, by name
    (hidden ones, such as a copy being made, are skipped); each directory once."""
    paths = config.model_paths()
    root = config.models_dir_path()
    if root is not None and root.is_dir():
        paths += [
            child.resolve() for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith(".")
            and (child / "manifest.yaml").is_file()
        ]
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class ReloadResult:
    path: Path
    result: str  # "loaded" | "refused"
    model: str = ""
    version: str = ""
    seconds: float = 0.0
    error: str = ""


class ServedModels:
    """The models of one server process: loaded at start, watched, swapped, closed."""

    def __init__(self, state: ServingState, config: Config, metrics: Metrics) -> None:
        self.state = state
        self.config = config
        self.metrics = metrics
        self.detector: Any = None
        self._served: dict[Path, tuple[str, Fingerprint]] = {}  # path -> (model, as loaded)
        self._refused: dict[Path, Fingerprint] = {}  # path -> the fingerprint refused last
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._retiring: dict[asyncio.Task[None], ServedModel] = {}

    # -- loading -------------------------------------------------------------------------

    async def _load(self, path: Path) -> ServedModel:
        """One model directory: verified, loaded and warmed up in a thread, then its policy
        store, batcher and moderator, started."""
        config = self.config
        forwards, intra_op_threads = config.threads()
        log.info("loading model", path=str(path), forwards=forwards, threads=intra_op_threads)
        engine = await asyncio.to_thread(
            Engine.load,
            path,
            device=config.device,
            intra_op_threads=intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            verify=config.verify_checksums,
        )
        name = engine.manifest.name
        policies = await asyncio.to_thread(
            PolicyStore.load, config.policies_path(), manifest_thresholds(engine.manifest)
        )
        batching = dataclasses.replace(config.batching, inference_threads=forwards)
        batcher = Batcher(engine, batching, self.metrics.observer(name))
        moderator = Moderator(
            batcher,
            engine.manifest,
            policies,
            self.state.explainer,
            on_fallback=self.metrics.explanation_fallback,
            max_windows=config.limits.max_windows_per_text,
        )
        await batcher.start()
        policies.start_watching()
        return ServedModel(name, engine, batcher, policies, moderator)

    async def load_all(self) -> None:
        """At start: every model directory, all or nothing (raises on the first failure,
        with whatever was loaded closed again)."""
        loaded: dict[Path, ServedModel] = {}
        try:
            for path in model_directories(self.config):
                mark = fingerprint(path)
                served = await self._load(path)
                loaded[path] = served
                if any(m.name == served.name for p, m in loaded.items() if p != path):
                    raise ValueError(f"{path}: model name {served.name!r} is served twice")
                self._served[path] = (served.name, mark)
                self._log_ready(served)
            if not loaded:
                raise ValueError("no model directory to serve (models and models_dir are empty)")
            models = self._ordered(loaded.values())
            default = self._default(models)
            if self.config.routing.detect:
                self.detector = await asyncio.to_thread(self._load_detector)
            core = self._core(models, default)
        except BaseException:
            self._served.clear()
            for served in loaded.values():
                await close_model(served)
            raise
        self._install(models, default, core)

    def _log_ready(self, served: ServedModel) -> None:
        manifest = served.manifest
        log.info(
            "model ready",
            model=served.name,
            version=manifest.version,
            precision=manifest.precision,
            providers=list(served.engine.providers),
            policies=served.policies.names(),
            tasks=[task.name for task in manifest.tasks],
        )

    def _ordered(self, models: Iterable[ServedModel]) -> dict[str, ServedModel]:
        return {served.name: served for served in models}

    def _default(self, models: Mapping[str, ServedModel]) -> str:
        default = self.config.default_model or next(iter(models))
        if default not in models:
            raise ValueError(f"default_model {default!r} is not served; served: {list(models)}")
        return default

    def _core(self, models: Mapping[str, ServedModel], default: str) -> Core:
        """Routing (manifests' languages + `routing`) and moderation over exactly `models`."""
        routing = self.config.routing
        table = RoutingTable.build(
            ((name, served.manifest.languages) for name, served in models.items()),
            overrides=routing.languages,
            fallback=routing.fallback or default,
            min_confidence=routing.min_confidence,
        )
        unknown = sorted({*table.models()} - set(models))
        if unknown:
            raise ValueError(
                f"routing names models that are not served: {unknown}; served: {list(models)}"
            )
        log.info(
            "routing",
            languages=dict(table.languages),
            fallback=table.fallback,
            detector=getattr(self.detector, "name", None),
        )
        moderators = {name: served.moderator for name, served in models.items()}
        return Core(lambda: moderators, Router(table, self.detector))

    def _load_detector(self) -> Any:
        """fastText language identification; without it every text is "und" (fallback)."""
        from wacht.service.config import resolve_path
        from wacht.service.runtime.language import LanguageDetector

        path = self.config.routing.language_model
        try:
            return LanguageDetector(resolve_path(path) if path else None)
        except Exception as exc:
            log.error(
                "language detector failed to load; texts go to the fallback model",
                error=str(exc) or type(exc).__name__,
            )
            return None

    def _install(self, models: dict[str, ServedModel], default: str, core: Core) -> None:
        """The swap: synchronous, so no call sees half of it."""
        state = self.state
        for served in models.values():
            served.is_default = served.name == default
        state.models = models
        state.default_model = default
        state.core = core
        state.generation += 1
        self.metrics.model_info.clear()
        for served in models.values():
            manifest = served.manifest
            self.metrics.model_info.labels(
                manifest.name,
                manifest.version,
                manifest.precision,
                served.engine.providers[0] if served.engine.providers else "",
                str(served.is_default).lower(),
            ).set(1)

    # -- reloading -----------------------------------------------------------------------

    async def reload(self, trigger: str, paths: list[Path] | None = None) -> list[ReloadResult]:
        """Load every directory in `paths` (default: each served or new one whose files
        changed since it was loaded) and swap it in; one at a time."""
        async with self._lock:
            if not self.state.ready:
                return []  # the start has not loaded (or failed); a restart loads afresh
            if paths is None:
                paths = [p for p, mark in self._scan().items() if mark != self._loaded_mark(p)]
            return [await self._reload_one(path, trigger) for path in paths]

    def _loaded_mark(self, path: Path) -> Fingerprint | None:
        served = self._served.get(path)
        return served[1] if served else None

    def _scan(self) -> dict[Path, Fingerprint]:
        paths = list(dict.fromkeys([*self._served, *model_directories(self.config)]))
        return {path: fingerprint(path) for path in paths}

    async def _reload_one(self, path: Path, trigger: str) -> ReloadResult:
        mark = fingerprint(path)
        previous = self._served.get(path)
        old = self.state.models.get(previous[0]) if previous else None
        started = time.monotonic()
        if mark == GONE:
            return self._refuse(path, mark, FileNotFoundError(f"{path}: not a directory"),
                                old, trigger, started)
        try:
            served = await self._load(path)
        except Exception as exc:
            return self._refuse(path, mark, exc, old, trigger, started)
        try:
            models = self._replaced(path, served)
            default = self._default(models)
            core = self._core(models, default)
        except Exception as exc:
            await close_model(served)
            return self._refuse(path, mark, exc, old, trigger, started)
        self._install(models, default, core)
        self._served[path] = (served.name, mark)
        self._refused.pop(path, None)
        seconds = round(time.monotonic() - started, 3)
        self.metrics.model_reloads.labels("loaded").inc()
        log.info(
            "model_reloaded",
            path=str(path),
            trigger=trigger,
            model=served.name,
            version=served.manifest.version,
            tasks=[task.name for task in served.manifest.tasks],
            replaced=f"{old.name} {old.manifest.version}" if old else None,
            seconds=seconds,
        )
        if old is not None:
            self._retire(old, self.state.generation)
        return ReloadResult(path, "loaded", served.name, served.manifest.version, seconds)

    def _replaced(self, path: Path, served: ServedModel) -> dict[str, ServedModel]:
        """The served set with `path`'s model replaced by `served` (or `served` added), in
        the order the directories were first loaded."""
        by_path = {p: self.state.models[name] for p, (name, _) in self._served.items()}
        by_path[path] = served
        clash = [p for p, m in by_path.items() if m.name == served.name and p != path]
        if clash:
            raise ValueError(f"{path}: model name {served.name!r} is already served from "
                             f"{clash[0]}")
        return self._ordered(by_path.values())

    def _refuse(self, path: Path, mark: Fingerprint, exc: BaseException,
                old: ServedModel | None, trigger: str, started: float) -> ReloadResult:
        self._refused[path] = mark
        self.metrics.model_reloads.labels("refused").inc()
        error = str(exc) or type(exc).__name__
        log.error(
            "model_reload_refused",
            path=str(path),
            trigger=trigger,
            error=error,
            error_type=type(exc).__name__,
            serving=f"{old.name} {old.manifest.version}" if old else None,
        )
        return ReloadResult(path, "refused", seconds=round(time.monotonic() - started, 3),
                            error=error)

    def _retire(self, old: ServedModel, generation: int) -> None:
        task = asyncio.get_running_loop().create_task(self._drain_and_close(old, generation))
        self._retiring[task] = old
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _drain_and_close(self, old: ServedModel, generation: int) -> None:
        started = time.monotonic()
        while (self.state.calls_before(generation)
               and time.monotonic() - started < RETIRE_TIMEOUT_S):
            await asyncio.sleep(0.05)
        waiting = self.state.calls_before(generation)
        await close_model(old)
        log.info("model_retired", model=old.name, version=old.manifest.version,
                 seconds=round(time.monotonic() - started, 3), calls_still_open=waiting)

    # -- watching ------------------------------------------------------------------------

    def start_watching(self, interval_s: float) -> None:
        """Poll the directories; reload one whose files changed and then held still for a
        poll (a copy in progress is not loaded half-written). A refused state is not retried
        until the files change again (or SIGHUP)."""
        if interval_s > 0 and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(interval_s))

    async def _watch(self, interval_s: float) -> None:
        seen = await asyncio.to_thread(self._scan)
        while True:
            await asyncio.sleep(interval_s)
            try:
                current = await asyncio.to_thread(self._scan)
                due = [
                    path for path, mark in current.items()
                    if seen.get(path) == mark and mark != self._loaded_mark(path)
                    and mark != self._refused.get(path)
                ]
                seen = current
                if due:
                    await self.reload("watch", due)
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("model_watch_failed")

    async def close(self) -> None:
        """Stop watching; close the retiring models and the served ones."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for task, served in retiring:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await close_model(served)
        for served in list(self.state.models.values()):
            await close_model(served)


async def close_model(served: ServedModel) -> None:
    """Stop a model's policy watcher and batcher (which finishes what it admitted)."""
    await served.policies.stop_watching()
    try:
        await served.batcher.stop()
    except Exception as exc:  # a failing batcher must not block the others
        log.error("batcher stop failed", model=served.name, error=str(exc))
