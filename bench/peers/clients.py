"""One async client per stack, all with the same two calls (runs in bench/.venv-bench).

`one_task(texts)` scores the texts with the single head; `moderation(texts)` gets sentiment and
toxicity for every text: one Moderate call on Wacht, one call per task model on the peers, sent
concurrently (as their users would). Both return per-text scores {label: score} so answers can be
checked (count, and agreement between stacks serving the same file); a wrong count raises.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc

from wacht.v1 import (
    analysis_pb2,
    analysis_pb2_grpc,
    common_pb2,
    moderation_pb2,
    moderation_pb2_grpc,
)

Scores = list[dict[str, float]]
CHANNELS = 4  # HTTP/2 connections per client, round-robin
GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20),
                ("grpc.use_local_subchannel_pool", 1)]


class BadAnswer(RuntimeError):
    """The stack answered, but not with one result per text."""


class StackClient(Protocol):
    async def one_task(self, texts: list[str]) -> Scores: ...
    async def moderation(self, texts: list[str]) -> Scores: ...
    async def close(self) -> None: ...


def _check(texts: list[str], scores: Scores) -> Scores:
    if len(scores) != len(texts) or any(not s for s in scores):
        raise BadAnswer(f"{len(scores)} results for {len(texts)} texts")
    return scores


def _inputs(texts: list[str]) -> list[common_pb2.TextInput]:
    return [common_pb2.TextInput(id=str(i), text=t) for i, t in enumerate(texts)]


class _GrpcPool:
    def __init__(self, address: str) -> None:
        self.channels = [grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
                         for _ in range(CHANNELS)]
        self._next = itertools.cycle(self.channels)

    def channel(self) -> grpc.aio.Channel:
        return next(self._next)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))


class WachtClient:
    """Wacht: Analysis/Analyze for one task, Moderation/Moderate for full moderation."""

    def __init__(self, address: str, task: str, truncation: str = "head",
                 timeout: float = 60.0) -> None:
        self.pool = _GrpcPool(address)
        self.task = task
        self.truncation = {"head": common_pb2.TRUNCATION_HEAD,
                           "window": common_pb2.TRUNCATION_SLIDING_WINDOW}[truncation]
        self.timeout = timeout

    async def one_task(self, texts: list[str]) -> Scores:
        stub = analysis_pb2_grpc.AnalysisStub(self.pool.channel())
        reply = await stub.Analyze(
            analysis_pb2.AnalyzeRequest(texts=_inputs(texts), tasks=[self.task],
                                        truncation=self.truncation),
            timeout=self.timeout,
        )
        return _check(texts, [{s.label: s.score for t in r.tasks for s in t.scores}
                              for r in reply.results])

    async def moderation(self, texts: list[str]) -> Scores:
        stub = moderation_pb2_grpc.ModerationStub(self.pool.channel())
        reply = await stub.Moderate(
            moderation_pb2.ModerateRequest(texts=_inputs(texts), truncation=self.truncation),
            timeout=self.timeout,
        )
        out = []
        for r in reply.results:
            scores = {c.category: c.score for c in r.categories}
            scores.update({s.label: s.score for s in r.sentiment.scores})
            out.append(scores)
        return _check(texts, out)

    async def close(self) -> None:
        await self.pool.close()


class NaiveClient:
    """The naive stack: Wacht's Analyze message, `model` = the task's pipeline."""

    def __init__(self, address: str, task: str, tasks: list[str], timeout: float = 60.0) -> None:
        self.pool = _GrpcPool(address)
        self.task, self.tasks, self.timeout = task, tasks, timeout

    async def _call(self, model: str, texts: list[str]) -> Scores:
        stub = analysis_pb2_grpc.AnalysisStub(self.pool.channel())
        reply = await stub.Analyze(
            analysis_pb2.AnalyzeRequest(texts=_inputs(texts), model=model), timeout=self.timeout
        )
        return _check(texts, [{s.label: s.score for t in r.tasks for s in t.scores}
                              for r in reply.results])

    async def one_task(self, texts: list[str]) -> Scores:
        return await self._call(self.task, texts)

    async def moderation(self, texts: list[str]) -> Scores:
        return _merge(await asyncio.gather(*(self._call(t, texts) for t in self.tasks)))

    async def close(self) -> None:
        await self.pool.close()


class TritonClient:
    """PyTriton: Triton's gRPC infer (KServe v2), model = task, input `text` BYTES [n, 1]."""

    def __init__(self, address: str, task: str, tasks: list[str], labels: dict[str, list[str]],
                 timeout: float = 60.0) -> None:
        self.clients = [triton_grpc.InferenceServerClient(address) for _ in range(CHANNELS)]
        self._next = itertools.cycle(self.clients)
        self.task, self.tasks, self.labels, self.timeout = task, tasks, labels, timeout

    async def _call(self, model: str, texts: list[str]) -> Scores:
        text = triton_grpc.InferInput("text", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
        reply = await next(self._next).infer(model, [text], client_timeout=self.timeout)
        labels = self.labels[model]
        return _check(texts, [dict(zip(labels, map(float, row), strict=True))
                              for row in reply.as_numpy("scores")])

    async def one_task(self, texts: list[str]) -> Scores:
        return await self._call(self.task, texts)

    async def moderation(self, texts: list[str]) -> Scores:
        return _merge(await asyncio.gather(*(self._call(t, texts) for t in self.tasks)))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


class InfinityClient:
    """Infinity: HTTP POST /classify {"model": task, "input": texts}."""

    def __init__(self, url: str, task: str, tasks: list[str], timeout: float = 60.0) -> None:
        self.url = url.rstrip("/") + "/classify"
        self.task, self.tasks = task, tasks
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def _call(self, model: str, texts: list[str]) -> Scores:
        async with self.session.post(self.url, json={"model": model, "input": texts}) as reply:
            if reply.status != 200:
                raise BadAnswer(f"HTTP {reply.status}: {(await reply.text())[:200]}")
            body = await reply.json()
        return _check(texts, [{d["label"]: d["score"] for d in row} for row in body["data"]])

    async def one_task(self, texts: list[str]) -> Scores:
        return await self._call(self.task, texts)

    async def moderation(self, texts: list[str]) -> Scores:
        return _merge(await asyncio.gather(*(self._call(t, texts) for t in self.tasks)))

    async def close(self) -> None:
        await self.session.close()


def _merge(per_task: list[Scores]) -> Scores:
    merged: Scores = [{} for _ in per_task[0]]
    for scores in per_task:
        for out, s in zip(merged, scores, strict=True):
            out.update(s)
    return merged
