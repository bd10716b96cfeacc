"""The one entry every front end calls: route each text to a model, score, apply the policy,
explain. A request that mixes languages is split across the models its texts route to; the
parts run concurrently (each through its model's own batcher) and the answer keeps the
request's order. If any part fails, the others are cancelled and the call fails as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from wacht.service.moderation.moderator import (
    ExplanationOutcome,
    ModerateOptions,
    ModerationTimings,
    Moderator,
    TextOutcome,
)
from wacht.service.moderation.routing import Route, Router

T = TypeVar("T")


@dataclass
class Scored:
    """Raw scores of one text (Analyze), with the model that produced them."""

    scores: Any  # runtime TextScores
    model: str
    route: Route


async def all_or_nothing(jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Results in order; on the first failure the other jobs are cancelled and it is raised."""
    if len(jobs) == 1:
        return [await jobs[0]]
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()


def _groups(routes: Sequence[Route]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, route in enumerate(routes):
        groups.setdefault(route.model, []).append(index)
    return groups


class Core:
    def __init__(
        self, moderators: Callable[[], Mapping[str, Moderator]], router: Router
    ) -> None:
        self._moderators = moderators  # read per call: models may be swapped while serving
        self.router = router

    def _moderator(self, name: str) -> Moderator:
        moderators = self._moderators()
        if name not in moderators:
            raise LookupError(f"routing table names model {name!r}, which is not served")
        return moderators[name]

    async def moderate(
        self, texts: Sequence[str], options: ModerateOptions, *, model: str = "",
        language: str = "",
    ) -> tuple[list[TextOutcome], ModerationTimings, str]:
        """Outcomes in input order (each with its language and model), timings summed over
        every model's part, the policy used."""
        routes = await self.router.routes(texts, model=model, language=language)
        groups = _groups(routes)
        parts = await all_or_nothing([
            self._moderator(name).moderate(
                [texts[i] for i in indices], options,
                languages=[routes[i].language for i in indices],
            )
            for name, indices in groups.items()
        ])
        outcomes: list[TextOutcome | None] = [None] * len(texts)
        timings = ModerationTimings()
        policy = ""
        for indices, (part, part_timings, part_policy) in zip(groups.values(), parts,
                                                               strict=True):
            for index, outcome in zip(indices, part, strict=True):
                outcome.language_confidence = routes[index].confidence
                outcomes[index] = outcome
            timings.merge(part_timings)
            policy = policy or part_policy
        return [o for o in outcomes if o is not None], timings, policy

    async def score(
        self, texts: Sequence[str], *, truncation: str = "window", deadline: float | None = None,
        model: str = "", language: str = "", caller: str = "",
    ) -> tuple[list[Scored], ModerationTimings]:
        """Raw per-task scores (no policy) of every text, in input order. `caller`: the
        batchers' fair-queueing key ("" = per call)."""
        routes = await self.router.routes(texts, model=model, language=language)
        groups = _groups(routes)
        moderators = {name: self._moderator(name) for name in groups}
        parts = await all_or_nothing([
            moderators[name].score([texts[i] for i in indices], truncation=truncation,
                                   deadline=deadline, caller=caller)
            for name, indices in groups.items()
        ])
        scored: list[Scored | None] = [None] * len(texts)
        timings = ModerationTimings()
        for (name, indices), (part, batch_timings) in zip(groups.items(), parts, strict=True):
            timings.add(batch_timings)
            for index, scores in zip(indices, part, strict=True):
                scored[index] = Scored(scores, name, routes[index])
        return [s for s in scored if s is not None], timings

    async def explain_stream(
        self, text: str, options: ModerateOptions, *, model: str = "", language: str = ""
    ) -> AsyncIterator[TextOutcome | str | ExplanationOutcome]:
        """The TextOutcome, then generated text deltas, then the guarded explanation."""
        (route,) = await self.router.routes([text], model=model, language=language)
        events = self._moderator(route.model).explain_stream(text, options, language=route.language)
        async for event in events:
            if isinstance(event, TextOutcome):
                event.language_confidence = route.confidence
            yield event
