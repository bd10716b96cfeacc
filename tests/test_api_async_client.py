"""The asyncio client against the real server: unary calls, a stream, health."""

from __future__ import annotations

import asyncio

from api_support import ServerThread

from wacht.client import AsyncWachtClient


def test_async_client(wacht_server: ServerThread) -> None:
    async def run() -> None:
        async with AsyncWachtClient(wacht_server.address, timeout=30) as client:
            results = await asyncio.gather(*(client.moderate([f"note {i}"]) for i in range(8)))
            assert all(r.results[0].id == "0" for r in results)
            analysis = await client.analyze({"k": "lovely day"}, tasks=["sentiment"])
            assert analysis.results[0].id == "k"

            async def messages():
                for i in range(5):
                    yield [f"stream text {i}"]

            replies = [r async for r in client.stream(messages())]
            assert [r.sequence for r in replies] == [0, 1, 2, 3, 4]
            assert await client.health("wacht.v1.Analysis") == 1
            async for status in client.watch_health(""):
                assert status == 1
                break
            info = await client.model_info()
            assert info.is_default
            assert (await client.list_categories()).categories
            assert (await client.list_policies()).policies
            events = [e.WhichOneof("event") async for e in client.explain("you idiot")]
            assert events[0] == "moderation" and events[-1] == "final"

    asyncio.run(run())
