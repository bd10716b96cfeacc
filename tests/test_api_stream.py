"""ModerateStream: one response per message, in order, errors in-stream, bounded reading."""

from __future__ import annotations

import threading
import time

import grpc
from api_support import ServerThread, make_config, require_model, server_thread
from google.rpc import error_details_pb2

from wacht.client import WachtClient, error_details, moderate_request
from wacht.v1 import moderation_pb2


def test_stream_order_and_error_in_the_middle(client: WachtClient) -> None:
    messages = [
        moderate_request([f"message {i} is a friendly note", "second text"]) for i in range(12)
    ]
    messages[5] = moderation_pb2.ModerateRequest()  # empty: an error for this message only
    messages[8] = moderate_request(["x"], categories=["spam"])
    tagged = [
        moderation_pb2.ModerateStreamRequest(message_id=f"m{i}", request=m)
        for i, m in enumerate(messages)
    ]
    replies = list(client.stream(tagged))
    assert [r.sequence for r in replies] == list(range(12))
    assert [r.message_id for r in replies] == [f"m{i}" for i in range(12)]
    outcomes = [r.WhichOneof("outcome") for r in replies]
    assert (
        outcomes == ["response"] * 5 + ["error"] + ["response"] * 2 + ["error"] + ["response"] * 3
    )
    empty = replies[5].error
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = [d for d in error_details(empty) if isinstance(d, error_details_pb2.BadRequest)]
    assert bad[0].field_violations[0].field == "request.texts"
    assert error_details(replies[8].error)[0].field_violations[0].field == "request.categories[0]"
    assert [r.id for r in replies[11].response.results] == ["0", "1"]


def test_stream_with_plain_lists(client: WachtClient) -> None:
    replies = list(client.stream([["a"], ["b", "c"], {"z": "d"}]))
    assert [len(r.response.results) for r in replies] == [1, 2, 1]
    assert replies[2].response.results[0].id == "z"


def _pulled_before_first_reply(server: ServerThread, total: int) -> tuple[int, int]:
    """Send `total` large messages; count how many the client had handed to gRPC when the first
    reply arrived and how many replies came in the end."""
    pulled = 0
    lock = threading.Lock()
    text = "a calm sentence about nothing in particular. " * 1400  # ~63 KB

    def messages():
        nonlocal pulled
        for i in range(total):
            with lock:
                pulled += 1
            yield moderation_pb2.ModerateStreamRequest(
                message_id=str(i), request=moderate_request([text], truncation="head")
            )

    with WachtClient(server.address, timeout=120) as c:
        replies = c.stream(messages())
        first = next(replies)
        time.sleep(0.5)  # give an unbounded server every chance to read on
        with lock:
            seen = pulled
        rest = list(replies)
    assert first.sequence == 0
    return seen, 1 + len(rest)


def test_stream_backpressure_stops_reading() -> None:
    require_model()
    config = make_config(limits={"stream_inflight_messages": 2})
    with server_thread(config) as server:
        seen, answered = _pulled_before_first_reply(server, 60)
    assert answered == 60
    # 2 in flight on the server plus what HTTP/2 flow-control windows buffer (64 KiB each
    # side): far fewer than all 60 messages (~3.8 MB) were pulled from the client.
    assert seen < 30, seen


def test_cancelled_stream_is_counted_cancelled(wacht_server: ServerThread) -> None:
    """A client that writes, never reads, then cancels: the request metric says CANCELLED
    (it said OK), and the server keeps serving."""
    from api_support import metric_value

    def cancelled() -> float:
        return metric_value(wacht_server.metrics_text(), "wacht_requests_total",
                            method="ModerateStream", code="CANCELLED")

    before = cancelled()
    stop = threading.Event()

    def messages():
        i = 0
        while not stop.is_set():
            i += 1
            yield moderation_pb2.ModerateStreamRequest(
                message_id=str(i), request=moderate_request([f"short text {i}"])
            )
            time.sleep(0.001)

    with WachtClient(wacht_server.address, timeout=60) as c:
        call = c.moderation.ModerateStream(messages(), timeout=30)
        time.sleep(1.0)
        call.cancel()
        stop.set()
        deadline = time.monotonic() + 10
        while cancelled() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cancelled() == before + 1
        assert c.moderate(["still serving"]).results[0].id == "0"


def test_client_that_never_reads_is_held_back(wacht_server: ServerThread) -> None:
    """A client that writes small messages forever and never reads: once both HTTP/2 windows
    are full the server stops reading, so the count of messages taken from the client stops
    growing. The client keeps BDP probing off: with it on, the client's own transport keeps
    enlarging its receive window and buffers the replies in the client's memory."""
    from wacht.v1 import moderation_pb2_grpc

    pulled = 0
    lock = threading.Lock()
    stop = threading.Event()

    def messages():
        nonlocal pulled
        i = 0
        while not stop.is_set():
            i += 1
            yield moderation_pb2.ModerateStreamRequest(
                message_id=str(i), request=moderate_request([f"short text {i}"])
            )
            with lock:
                pulled += 1

    channel = grpc.insecure_channel(wacht_server.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = moderation_pb2_grpc.ModerationStub(channel).ModerateStream(messages(), timeout=60)
        counts = []
        for _ in range(3):
            time.sleep(1.5)
            with lock:
                counts.append(pulled)
        call.cancel()
        stop.set()
    finally:
        channel.close()
    assert counts[0] > 100, counts  # the stream was served at first
    assert counts[2] - counts[1] <= 8, counts  # ...then reading stopped
