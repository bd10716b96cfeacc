"""Extra call requests (service/api/intake.py): calls are taken in by Wacht's own loops as
well as grpc's one, every kind of call still works through them, and the server runs (with
grpc's one request) where the private entry points are missing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from api_support import make_config, require_model, server_thread

from wacht.client import AsyncWachtClient
from wacht.service.api import intake

pytestmark = pytest.mark.slow
TEXTS = ["thanks, that was helpful", "you are an idiot", "lovely weather in the park"]


async def _many(address: str, calls: int) -> list[str]:
    """`calls` Moderate calls at once over 4 connections, plus one stream and one model
    listing; the codes."""
    clients = [AsyncWachtClient(address, own_connection=True) for _ in range(4)]

    async def one(i: int) -> str:
        try:
            response = await clients[i % 4].moderate([TEXTS[i % 3]], timeout=60)
            assert len(response.results) == 1
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    async def stream() -> str:
        results = [r async for r in clients[0].stream(TEXTS * 5, timeout=60)]
        return "OK" if len(results) == 15 else f"stream gave {len(results)}"

    async def models() -> str:
        return "OK" if (await clients[1].list_models(timeout=60)).models else "no models"

    try:
        return list(await asyncio.gather(*(one(i) for i in range(calls)), stream(), models()))
    finally:
        for client in clients:
            await client.close()


def test_calls_are_taken_in_by_the_extra_requests() -> None:
    require_model()
    with server_thread(make_config(accept_loops=4, max_loop_busy=0.0)) as server:
        codes = asyncio.run(_many(server.address, 200))
        assert codes == ["OK"] * 202
        # 4 more requests per method than grpc's one: most calls of a burst come through them
        assert server.server.intake.accepted >= 100


def test_no_extra_requests_when_off_or_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    require_model()
    with server_thread(make_config(accept_loops=0, max_loop_busy=0.0)) as server:
        assert asyncio.run(_many(server.address, 40)) == ["OK"] * 42
        assert server.server.intake.accepted == 0
    monkeypatch.setattr(intake, "_private_api", lambda server: None)
    with server_thread(make_config(accept_loops=4, max_loop_busy=0.0)) as server:
        assert asyncio.run(_many(server.address, 40)) == ["OK"] * 42
        assert server.server.intake.accepted == 0
