"""Moderation policies: per-category review/block thresholds loaded from a directory of YAML files.

A policy file (``policies/<name>.yaml``)::

    name: strict                 # optional, defaults to the file name without .yaml
    description: Lower thresholds for children's communities.
    default: false               # true on at most one file: the server's default policy
    categories:                  # canonical categories (service.moderation.taxonomy)
      toxicity: {review: 0.3, block: 0.6}
      profanity: {enabled: false}

A threshold is a number in [0, 1] or an expression on the model's own (calibrated) threshold
for the category from its manifest: ``manifest``, ``manifest * 0.6``, ``manifest + 0.3`` or
``manifest - 0.1`` (the result is clamped to [0, 1]), so one policy file suits several models.
A category the file leaves out (or a key it leaves out) takes the manifest threshold as its
review threshold and halfway from there to 1.0 as its block threshold. A score triggers an
action when ``score >= threshold``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from wacht.service.moderation.taxonomy import CATEGORIES

log = structlog.get_logger(__name__)

BUILTIN_SOURCE = "built-in (model manifest thresholds)"
FILE_KEYS = ("name", "description", "default", "categories")
RULE_KEYS = ("enabled", "review", "block")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXPRESSION = re.compile(r"^\s*manifest\s*(?:([*+-])\s*([0-9]*\.?[0-9]+)\s*)?$")
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class CategoryRule:
    enabled: bool
    review: float
    block: float


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    rules: dict[str, CategoryRule]
    source: str


class PolicyError(ValueError):
    """A policy file is unusable; the message names the file, the key and the problem."""


def default_block(review: float) -> float:
    """The block threshold used where a policy gives none: halfway from review to 1.0."""
    return round(review + (1.0 - review) / 2.0, 4)


def manifest_thresholds(manifest: Any) -> dict[str, float]:
    """Category -> the lowest default threshold of the manifest labels that map to it."""
    out: dict[str, float] = {}
    for task in manifest.tasks:
        for label in task.labels:
            if label.category:
                out[label.category] = min(out.get(label.category, 1.0), float(label.threshold))
    return out


def builtin_rules(thresholds: dict[str, float]) -> dict[str, CategoryRule]:
    return {
        category: CategoryRule(enabled=True, review=thr, block=default_block(thr))
        for category, thr in thresholds.items()
    }


def _number(value: Any, where: str, manifest: float) -> float:
    if isinstance(value, str):
        match = EXPRESSION.match(value)
        if not match:
            raise PolicyError(
                f"{where}: must be a number between 0 and 1 or 'manifest', 'manifest * x', "
                f"'manifest + x', 'manifest - x', got {value!r}"
            )
        op, operand = match.group(1), float(match.group(2) or 0)
        result = {None: manifest, "*": manifest * operand, "+": manifest + operand,
                  "-": manifest - operand}[op]
        return round(min(1.0, max(0.0, result)), 6)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where}: must be a number between 0 and 1, got {value!r}")
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise PolicyError(f"{where}: must be a number between 0 and 1, got {value!r}")
    return number


def _rule(raw: Any, base: CategoryRule | None, where: str) -> CategoryRule:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping with keys {', '.join(RULE_KEYS)}")
    for key in raw:
        if key not in RULE_KEYS:
            raise PolicyError(f"{where}.{key}: unknown key (allowed: {', '.join(RULE_KEYS)})")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError(f"{where}.enabled: must be true or false, got {enabled!r}")
    base_review = base.review if base else FALLBACK_THRESHOLD
    review = _number(raw["review"], f"{where}.review", base_review) if "review" in raw else None
    block = _number(raw["block"], f"{where}.block", base_review) if "block" in raw else None
    if review is not None and block is not None and review > block:
        raise PolicyError(f"{where}: review threshold {review} is above block threshold {block}")
    if review is None:
        review = base_review if block is None else min(base_review, block)
    if block is None:
        block = max(review, base.block if base else default_block(review))
    return CategoryRule(enabled=enabled, review=review, block=block)


def parse_policy(
    data: Any, source: str, stem: str, thresholds: dict[str, float]
) -> tuple[Policy, bool]:
    """Validate one policy document; return it and whether it claims to be the default."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level")
    for key in data:
        if key not in FILE_KEYS:
            raise PolicyError(f"{source}: {key}: unknown key (allowed: {', '.join(FILE_KEYS)})")
    name = data.get("name", stem)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PolicyError(
            f"{source}: name: must be 1-64 letters, digits, '_', '-' or '.', got {name!r}"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PolicyError(f"{source}: description: must be a string")
    is_default = data.get("default", False)
    if not isinstance(is_default, bool):
        raise PolicyError(f"{source}: default: must be true or false, got {is_default!r}")
    categories = data.get("categories") or {}
    if not isinstance(categories, dict):
        raise PolicyError(f"{source}: categories: expected a mapping of category -> thresholds")
    base = builtin_rules(thresholds)
    rules = dict(base)
    for category, raw in categories.items():
        where = f"{source}: categories.{category}"
        if category not in CATEGORIES:
            raise PolicyError(f"{where}: unknown category (known: {', '.join(CATEGORIES)})")
        rules[category] = _rule(raw, base.get(category), where)
    return Policy(name=name, description=description, rules=rules, source=source), is_default


@dataclass(frozen=True)
class _Snapshot:
    policies: dict[str, Policy]
    default_name: str


class PolicyStore:
    """The loaded policies; `reload` swaps them atomically and keeps the old set on any error."""

    def __init__(
        self,
        directory: Path | None,
        manifest_thresholds: dict[str, float],
        default: str | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.thresholds = dict(manifest_thresholds)
        self.configured_default = default or None
        self._snapshot = self._read()
        self._fingerprint = self._scan()
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def load(
        cls,
        directory: Path | None,
        manifest_thresholds: dict[str, float],
        default: str | None = None,
    ) -> PolicyStore:
        """Read and validate every policy file; raise PolicyError naming each problem."""
        return cls(directory, manifest_thresholds, default)

    @property
    def default_name(self) -> str:
        return self._snapshot.default_name

    def get(self, name: str = "") -> Policy:
        snapshot = self._snapshot
        return snapshot.policies[name or snapshot.default_name]

    def names(self) -> list[str]:
        return sorted(self._snapshot.policies)

    def policies(self) -> list[Policy]:
        snapshot = self._snapshot
        return [snapshot.policies[name] for name in sorted(snapshot.policies)]

    def reload(self) -> list[str]:
        """Re-read the directory. Return the problems found; on any, keep the old policies."""
        fingerprint = self._scan()
        try:
            snapshot = self._read()
        except PolicyError as exc:
            errors = str(exc).split("\n")
            log.warning(
                "policy_reload_failed",
                directory=str(self.directory),
                errors=errors,
                kept=sorted(self._snapshot.policies),
            )
            self._fingerprint = fingerprint
            return errors
        self._snapshot = snapshot
        self._fingerprint = fingerprint
        log.info(
            "policies_reloaded",
            directory=str(self.directory),
            policies=sorted(snapshot.policies),
            default=snapshot.default_name,
        )
        return []

    def start_watching(self, interval_s: float = 1.0) -> None:
        """Reload whenever a policy file appears, disappears or changes (polls mtimes)."""
        if self.directory is None or self._watcher is not None:
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch(interval_s))

    async def stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self._scan() != self._fingerprint:
                    self.reload()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("policy_watch_failed", directory=str(self.directory))

    def _files(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(
            path
            for pattern in ("*.yaml", "*.yml")
            for path in self.directory.glob(pattern)
            if path.is_file() and not path.name.startswith(".")
        )

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self._files():
            with contextlib.suppress(OSError):
                stat = path.stat()
                out.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(out)

    def _read(self) -> _Snapshot:
        if self.directory is not None and not self.directory.is_dir():
            raise PolicyError(f"{self.directory}: policy directory does not exist")
        errors: list[str] = []
        policies: dict[str, Policy] = {}
        defaults: list[str] = []
        for path in self._files():
            try:
                text = path.read_text(encoding="utf-8")
                data = yaml.safe_load(text)
                policy, is_default = parse_policy(data, str(path), path.stem, self.thresholds)
            except PolicyError as exc:
                errors.append(str(exc))
                continue
            except yaml.YAMLError as exc:
                errors.append(f"{path}: invalid YAML: {' '.join(str(exc).split())}")
                continue
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(f"{path}: cannot read: {exc}")
                continue
            if policy.name in policies:
                errors.append(
                    f"{path}: name: policy '{policy.name}' is already defined in "
                    f"{policies[policy.name].source}"
                )
                continue
            policies[policy.name] = policy
            if is_default:
                defaults.append(policy.name)
        if len(defaults) > 1:
            errors.append(
                "default: more than one policy says 'default: true': "
                + ", ".join(f"{policies[n].source} ({n})" for n in defaults)
            )
        if "default" not in policies:
            policies["default"] = Policy(
                name="default",
                description="Model manifest thresholds; block halfway from review to 1.0.",
                rules=builtin_rules(self.thresholds),
                source=BUILTIN_SOURCE,
            )
        default_name = self.configured_default or (defaults[0] if defaults else "default")
        if default_name not in policies:
            errors.append(
                f"default policy '{default_name}' is not defined "
                f"(have: {', '.join(sorted(policies))})"
            )
        if errors:
            raise PolicyError("\n".join(errors))
        return _Snapshot(policies=policies, default_name=default_name)
