"""Extra call requests (service/api/intake.py): calls are taken in by Wacht's own loops as
well as grpc's one, every kind of call still works through them, an overloaded server
refuses scoring calls at their door (before reading them), and the server runs (with grpc's
one request) where the private entry points are missing."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
from api_support import make_config, metric_value, require_model, server_thread
from google.rpc import error_details_pb2

from wacht.client import AsyncWachtClient, error_details
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

    async def analyze() -> str:
        response = await clients[2].analyze(TEXTS, timeout=60)
        return "OK" if len(response.results) == 3 else "analyze gave too few"

    async def explain() -> str:
        replies = [r async for r in clients[3].explain(TEXTS[1], timeout=60)]
        return "OK" if replies else "no explanation"

    try:
        return list(await asyncio.gather(*(one(i) for i in range(calls)), stream(), models(),
                                         analyze(), explain()))
    finally:
        for client in clients:
            await client.close()


def test_calls_are_taken_in_by_the_extra_requests() -> None:
    require_model()
    # no wait bound: this is about taking calls in, not about refusing them
    config = make_config(accept_loops=4, max_loop_busy=0.0, batching={"max_queue_wait_ms": 0})
    with server_thread(config) as server:
        codes = asyncio.run(_many(server.address, 200))
        assert codes == ["OK"] * 204
        # 4 more requests per method than grpc's one: most calls of a burst come through them
        assert server.server.intake.accepted >= 100


def test_no_extra_requests_when_off_or_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    require_model()
    with server_thread(make_config(accept_loops=0, max_loop_busy=0.0)) as server:
        assert asyncio.run(_many(server.address, 40)) == ["OK"] * 44
        assert server.server.intake.accepted == 0
    monkeypatch.setattr(intake, "_private_api", lambda server: None)
    with server_thread(make_config(accept_loops=4, max_loop_busy=0.0)) as server:
        assert asyncio.run(_many(server.address, 40)) == ["OK"] * 44
        assert server.server.intake.accepted == 0


def test_an_overloaded_server_refuses_scoring_calls_at_the_door() -> None:
    """A burst far over a 20 ms wait bound: most refusals are sent by the door, before the
    call is read; each carries a RetryInfo and the client's request id, and each is counted
    as an answered call like the rest."""
    require_model()
    config = make_config(accept_loops=4, max_loop_busy=0.0,
                         batching={"max_queue_wait_ms": 20.0})

    async def burst(address: str) -> list[tuple[str, float | None, str | None]]:
        clients = [AsyncWachtClient(address, own_connection=True) for _ in range(4)]

        async def one(i: int) -> tuple[str, float | None, str | None]:
            call = clients[i % 4].moderation.Moderate(
                _request(TEXTS[i % 3]), timeout=30, metadata=(("x-request-id", f"burst-{i}"),))
            try:
                await call
                return "OK", None, None
            except grpc.aio.AioRpcError as exc:
                retry = [d.retry_delay.ToTimedelta().total_seconds()
                         for d in error_details(exc)
                         if isinstance(d, error_details_pb2.RetryInfo)]
                ids = [v for k, v in (exc.trailing_metadata() or ()) if k == "x-request-id"]
                return exc.code().name, retry[0] if retry else None, ids[0] if ids else None

        try:
            return list(await asyncio.gather(*(one(i) for i in range(1000))))
        finally:
            for client in clients:
                await client.close()

    with server_thread(config) as server:
        outcomes = asyncio.run(burst(server.address))
        codes = Counter(code for code, _, _ in outcomes)
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        refused = [(retry, rid) for code, retry, rid in outcomes if code == "RESOURCE_EXHAUSTED"]
        assert all(retry is not None and 0 < retry <= 60 for retry, _ in refused)
        assert all(rid is not None and rid.startswith("burst-") for _, rid in refused)
        assert server.server.intake.refused > 0
        assert server.server.intake.refused <= codes["RESOURCE_EXHAUSTED"]
        text = server.metrics_text()
        assert metric_value(text, "wacht_requests_total", method="Moderate",
                            code="RESOURCE_EXHAUSTED") == codes["RESOURCE_EXHAUSTED"]
        assert metric_value(text, "wacht_requests_total", method="Moderate",
                            code="OK") == codes["OK"]


def _request(text: str) -> object:
    from wacht.client import moderate_request

    return moderate_request([text])
