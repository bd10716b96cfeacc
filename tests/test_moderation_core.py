"""The core's split of one request across models (pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from wacht.service.moderation.core import all_or_nothing


def test_results_keep_job_order() -> None:
    async def job(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    async def main() -> list[int]:
        return await all_or_nothing([job(1, 0.03), job(2, 0.0), job(3, 0.01)])

    assert asyncio.run(main()) == [1, 2, 3]


def test_first_failure_cancels_the_siblings() -> None:
    cancelled = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    async def failing() -> int:
        await asyncio.sleep(0.01)
        raise LookupError("model gone")

    async def main() -> None:
        with pytest.raises(LookupError, match="model gone"):
            await all_or_nothing([slow(), failing()])
        await asyncio.sleep(0)
        assert cancelled.is_set()

    asyncio.run(main())
