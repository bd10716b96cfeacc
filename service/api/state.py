"""What the servicers share: the loaded models, limits, metrics and the lifecycle flags."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from wacht.service.api import errors
from wacht.service.batching.batcher import Batcher, Overloaded
from wacht.service.config import Config
from wacht.service.moderation.core import Core
from wacht.service.moderation.moderator import Moderator
from wacht.service.moderation.policies import PolicyStore
from wacht.service.observability.metrics import Metrics
from wacht.service.observability.redact import shown
from wacht.service.runtime.engine import Engine


@dataclass
class ServedModel:
    name: str
    engine: Engine
    batcher: Batcher
    policies: PolicyStore
    moderator: Moderator
    is_default: bool = False

    @property
    def manifest(self) -> Any:
        return self.engine.manifest


@dataclass(frozen=True)
class Target:
    """What a request can reach: the model it names, else every routing target."""

    core: Core
    models: list[ServedModel]

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories every reachable model scores (a routed text must not lack one)."""
        first, *rest = self.models
        return tuple(c for c in first.manifest.categories
                     if all(c in m.manifest.categories for m in rest))

    @property
    def tasks(self) -> list[str]:
        first, *rest = self.models
        return [t.name for t in first.manifest.tasks
                if all(t.name in (u.name for u in m.manifest.tasks) for m in rest)]

    @property
    def policies(self) -> PolicyStore:
        # every model loads the same policy files (thresholds relative to its own manifest)
        return self.models[0].policies

    def served(self, name: str) -> ServedModel:
        """The model that answered a text of this call: the one the call started with, even
        if a reload has swapped in another since."""
        return next(m for m in self.models if m.name == name)


@dataclass
class ServingState:
    config: Config
    metrics: Metrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    default_model: str = ""
    ready: bool = False
    draining: bool = False
    load_error: str = ""
    explainer: Any = None
    core: Core | None = None  # routing + moderation over every served model, once loaded
    inflight: int = 0
    # Bumped by every model swap (service/api/serving.py); calls count under the generation
    # they started in, so a swapped-out model is closed once the calls that may use it end.
    generation: int = 0
    _calls: Counter[int] = field(default_factory=Counter)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def admission_error(self, needs_models: bool = True) -> errors.ApiError | None:
        if self.draining:
            return errors.unavailable("the server is shutting down")
        if needs_models and not self.ready:
            if self.load_error:
                return errors.unavailable(f"no model is being served: {self.load_error}")
            return errors.unavailable("models are still loading")
        return None

    def shed(self, deadline: float | None, flow: str = "", entering: int = 0) -> None:
        """Refuse a scoring call at the door, before any work on it, when no model's
        batcher could take even a one-window call of `flow` (its caller's fair-queueing
        key) in time, behind `entering` calls let in just before it (raises Overloaded).
        The decision is the batchers' own `check_wait`; the exact one follows at
        admission."""
        refusals: list[Overloaded] = []
        for served in self.models.values():
            try:
                served.batcher.check_wait(1, deadline, caller=flow, entering=entering)
            except Overloaded as exc:
                refusals.append(exc)
            else:
                return
        if refusals:
            raise min(refusals, key=lambda r: r.retry_after_s)

    def model(self, name: str, field_path: str = "model") -> ServedModel:
        """The served model called `name` ("" = default), else INVALID_ARGUMENT on field_path."""
        key = name or self.default_model
        served = self.models.get(key)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise errors.invalid_argument(
                [(field_path, f"unknown model {shown(name)}; served models: {known}")]
            )
        return served

    def target(self, name: str, field_path: str = "model") -> Target:
        """The model named `name` (INVALID_ARGUMENT on field_path if unknown), or for "" every
        model language routing can send a text to."""
        if name:
            return Target(self._core(), [self.model(name, field_path)])
        core = self._core()
        names = core.router.table.models()
        return Target(core, [self.models[n] for n in names if n in self.models])

    def _core(self) -> Core:
        if self.core is None:
            raise errors.unavailable("models are still loading")
        return self.core

    def moderators(self) -> dict[str, Moderator]:
        return {name: served.moderator for name, served in self.models.items()}

    def call_started(self) -> int:
        """Count a call in; return its generation (give it back to call_finished)."""
        self.inflight += 1
        self._calls[self.generation] += 1
        self._idle.clear()
        return self.generation

    def calls_before(self, generation: int) -> int:
        """Calls in flight that started before `generation`."""
        return sum(n for g, n in self._calls.items() if g < generation)

    def call_finished(self, generation: int) -> None:
        self._calls[generation] -= 1
        if self._calls[generation] <= 0:
            del self._calls[generation]
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
