"""Which served model scores a text: by the request's model, its language hint, or the
language detected in the text, through a routing table (language -> model name).

The table comes from the manifests (each lists the languages its model reads; in config
order, the first model to list a language gets it, so a specialist listed before a
multilingual model keeps its language) with the operator's `routing.languages` on top.
Texts in a language no model lists, or detected with less than `min_confidence`, go to the
fallback model. A request that names a model is not routed; its texts' languages are still
detected and reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wacht.service.runtime.language import UNDETERMINED, Detection

DETECT_INLINE_UP_TO = 16  # texts; more are detected in a worker thread (~20 µs each)


class Detector(Protocol):
    def detect(self, texts: list[str]) -> list[Detection]: ...


@dataclass(frozen=True)
class Route:
    model: str
    language: str  # detected (or given) ISO 639-1 code; "und" when none was found
    confidence: float  # detector's probability; 1.0 for a language the request gave


@dataclass(frozen=True)
class RoutingTable:
    languages: Mapping[str, str] = field(default_factory=dict)
    fallback: str = ""
    min_confidence: float = 0.0

    @classmethod
    def build(
        cls,
        model_languages: Iterable[tuple[str, Sequence[str]]],
        *,
        overrides: Mapping[str, str] | None = None,
        fallback: str,
        min_confidence: float = 0.0,
    ) -> RoutingTable:
        """`model_languages`: (model name, its manifest languages) in config order."""
        table: dict[str, str] = {}
        for name, languages in model_languages:
            for language in languages:
                table.setdefault(language.lower(), name)
        for language, name in (overrides or {}).items():
            table[language.lower()] = name
        return cls(languages=table, fallback=fallback, min_confidence=min_confidence)

    def model_for(self, language: str, confidence: float) -> str:
        if confidence < self.min_confidence:
            return self.fallback
        return self.languages.get(language.lower().split("-")[0], self.fallback)

    def models(self) -> list[str]:
        """Every model a routed text can reach, fallback first."""
        return list(dict.fromkeys([self.fallback, *self.languages.values()]))


class Router:
    def __init__(self, table: RoutingTable, detector: Detector | None) -> None:
        self.table = table
        self.detector = detector

    async def routes(
        self, texts: Sequence[str], *, model: str = "", language: str = ""
    ) -> list[Route]:
        """One Route per text, in order. `model` pins every text to that model; `language`
        (a hint from the caller) replaces detection."""
        if language:
            code = language.lower().split("-")[0]
            target = model or self.table.model_for(code, 1.0)
            return [Route(target, code, 1.0) for _ in texts]
        found = await self._detect(list(texts))
        return [
            Route(model or self.table.model_for(lang, conf), lang, conf) for lang, conf in found
        ]

    async def _detect(self, texts: list[str]) -> list[tuple[str, float]]:
        if self.detector is None:
            return [(UNDETERMINED, 0.0)] * len(texts)
        if len(texts) <= DETECT_INLINE_UP_TO:
            found = self.detector.detect(texts)
        else:
            found = await asyncio.to_thread(self.detector.detect, texts)
        return [(d.language, d.confidence) for d in found]
