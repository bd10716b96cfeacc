"""Sending an error status on a call that is already gone (fake context: pure logic)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from wacht.service.api.calls import _send_status


class _Context:
    def __init__(self, failure: BaseException) -> None:
        self.failure = failure
        self.sent: list[tuple] = []

    async def abort(self, code: grpc.StatusCode, details: str, metadata: tuple) -> None:
        self.sent.append((code, details, metadata))
        raise self.failure


def test_status_on_a_gone_call_ends_as_cancelled() -> None:
    # what core raises when the client cancelled before the status could be sent
    context = _Context(RuntimeError('Failed "execute_batch"'))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_send_status(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", ()))
    assert context.sent == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", ())]


def test_normal_abort_is_left_alone() -> None:
    context = _Context(grpc.aio.AbortError())
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(_send_status(context, grpc.StatusCode.INVALID_ARGUMENT, "bad", (("k", "v"),)))
