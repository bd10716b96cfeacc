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


# --- the door: Intake's refusal before a call is read (CallRunner.door) ---


class _Batcher:
    """A batcher whose estimated wait is `wait_s` against a `bound_s` bound."""

    def __init__(self, wait_s: float, bound_s: float = 0.5) -> None:
        self.wait_s, self.bound_s = wait_s, bound_s
        self.asked: list[int] = []  # calls counted as entering, at each check

    def check_wait(self, windows: int, deadline: float | None, caller: str = "",
                   entering: int = 0) -> None:
        from wacht.service.batching.batcher import Overloaded

        self.asked.append(entering)
        if self.wait_s > self.bound_s:
            raise Overloaded(self.wait_s - self.bound_s, self.wait_s, self.bound_s)


class _Served:
    def __init__(self, batcher: _Batcher) -> None:
        self.batcher = batcher


class _CallContext:
    """What the door reads of a call: its metadata and deadline."""

    def __init__(self, metadata: tuple = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def time_remaining(self) -> float:
        return 5.0


def _runner(wait_s: float, keys: object = None, ready: bool = True):
    from wacht.service.api.calls import CallRunner
    from wacht.service.api.state import ServingState
    from wacht.service.config import Config
    from wacht.service.observability.metrics import Metrics
    from wacht.service.security import Guard

    state = ServingState(config=Config(max_loop_busy=0.0), metrics=Metrics())
    state.models["m"] = _Served(_Batcher(wait_s))  # type: ignore[assignment]
    state.ready = ready
    return CallRunner(state, Guard(keys))  # type: ignore[arg-type]


def test_the_door_refuses_an_overloaded_scoring_call_with_retry_info_and_its_id() -> None:
    from google.rpc import error_details_pb2, status_pb2

    from wacht.service.api.calls import REQUEST_ID_KEY

    runner = _runner(wait_s=0.8)
    refusal = runner.door("/wacht.v1.Moderation/Moderate",
                          _CallContext(((REQUEST_ID_KEY, "req-7"),)))
    assert refusal is not None
    code, details, trailers = refusal
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "estimated wait 800 ms" in details
    assert dict(trailers)[REQUEST_ID_KEY] == "req-7"
    status = status_pb2.Status.FromString(dict(trailers)["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(0.3)
    # counted like any answered call, under its method and caller
    text = _metrics_text(runner.state.metrics)
    assert 'wacht_requests_total{code="RESOURCE_EXHAUSTED",method="Moderate"} 1.0' in text


def test_the_door_lets_in_what_the_handler_must_answer_precisely() -> None:
    assert _runner(wait_s=0.1).door("/wacht.v1.Moderation/Moderate", _CallContext()) is None
    # not serving yet: the handler says UNAVAILABLE with the reason
    assert _runner(wait_s=0.8, ready=False).door(
        "/wacht.v1.Moderation/Moderate", _CallContext()) is None
    # a callers file and no key: the handler says UNAUTHENTICATED, not RESOURCE_EXHAUSTED
    runner = _runner(wait_s=0.8, keys=_NoKeys())
    assert runner.door("/wacht.v1.Moderation/Moderate", _CallContext()) is None


class _NoKeys:
    """A callers file that knows no key (every call is unauthenticated)."""

    def maybe_reload(self) -> None:
        pass

    def by_key(self, token: str) -> None:
        return None


def _metrics_text(metrics: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()  # type: ignore[attr-defined]


def test_a_handler_behind_the_door_knows_its_checks_are_done() -> None:
    from wacht.service.api.intake import _marked, door_pass

    async def unary(request: object, context: object) -> bool:
        return door_pass.get() is not None

    async def stream(request: object, context: object):
        yield door_pass.get() is not None

    unary_handler = grpc.unary_unary_rpc_method_handler(unary)
    stream_handler = grpc.unary_stream_rpc_method_handler(stream)

    async def run() -> tuple[bool, bool, list[bool]]:
        plain = await unary_handler.unary_unary(None, None)
        marked = await asyncio.create_task(_marked(unary_handler).unary_unary(None, None))
        replies = [r async for r in _marked(stream_handler).unary_stream(None, None)]
        return plain, marked, replies

    assert asyncio.run(run()) == (False, True, [True])


def test_calls_let_in_count_as_ahead_until_their_handler_reaches_admission() -> None:
    """Calls the door lets in are read and routed before they queue: until then the door
    counts each as one window ahead of the next, so a burst is not let in on one estimate."""
    from wacht.service.api.calls import Call
    from wacht.service.api.intake import DoorPass, door_pass

    runner = _runner(wait_s=0.1)
    batcher = runner.state.models["m"].batcher
    for _ in range(3):
        assert runner.door("/wacht.v1.Moderation/Moderate", _CallContext()) is None
    assert batcher.asked == [0, 1, 2]

    async def handler() -> None:  # one of them reaches admission, twice (two models)
        door_pass.set(DoorPass())
        call = Call("Moderate", "r", None, 0.0)
        with runner._admit(call, ["m"], 1), runner._admit(call, ["m"], 1):
            pass

    asyncio.run(handler())
    runner.door("/wacht.v1.Moderation/Moderate", _CallContext())
    assert batcher.asked[-1] == 2  # two still entering
    # a pass whose handler never ran stops counting after a second
    runner._entering[0] -= 5.0
    runner.door("/wacht.v1.Moderation/Moderate", _CallContext())
    assert batcher.asked[-1] == 2
