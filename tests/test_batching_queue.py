"""WindowQueue: arrival order, padded-cost batches, discarding dead requests."""

from __future__ import annotations

from wacht.service.batching.queue import QueuedWindow, WindowQueue


def queue_of(*lengths: int, owner: object = "r") -> WindowQueue:
    queue = WindowQueue()
    queue.push([QueuedWindow(owner, i, n, float(i)) for i, n in enumerate(lengths)])
    return queue


def keep_all(item: QueuedWindow) -> bool:
    return True


def test_take_stops_before_padded_cost_exceeds_budget():
    queue = queue_of(3, 10, 3, 3)
    assert [w.length for w in queue.take(20, 99, keep_all)] == [3, 10]  # 10*3 = 30 > 20
    assert [w.length for w in queue.take(20, 99, keep_all)] == [3, 3]
    assert len(queue) == 0


def test_take_respects_size_and_keeps_arrival_order():
    queue = queue_of(5, 1, 4, 2)
    assert [w.index for w in queue.take(10**6, 3, keep_all)] == [0, 1, 2]
    assert queue.oldest == 3.0


def test_window_over_budget_alone_still_goes():
    queue = queue_of(300, 2)
    assert [w.length for w in queue.take(256, 99, keep_all)] == [300]


def test_take_discards_windows_that_are_not_kept():
    dead, live = object(), object()
    queue = WindowQueue()
    queue.push([QueuedWindow(dead, 0, 5, 0.0), QueuedWindow(live, 0, 5, 0.0)])
    queue.push([QueuedWindow(dead, 1, 5, 0.0)])
    batch = queue.take(100, 99, lambda w: w.request is live)
    assert [w.request for w in batch] == [live]
    assert len(queue) == 0


def test_discard_removes_every_window_of_a_request():
    a, b = object(), object()
    queue = WindowQueue()
    queue.push([QueuedWindow(a, 0, 1, 0.0), QueuedWindow(b, 0, 1, 0.0), QueuedWindow(a, 1, 1, 0.0)])
    assert queue.discard(a) == 2
    assert [w.request for w in queue] == [b]


def test_batch_ready_when_more_than_one_batch_is_queued():
    assert not queue_of(3, 3).batch_ready(10, 99)
    assert queue_of(3, 3, 5).batch_ready(10, 99)  # 5*3 = 15 > 10
    assert queue_of(1, 1, 1).batch_ready(100, 2)
    assert not queue_of(50).batch_ready(10, 99)  # a single window is never "more than full"


def test_take_is_round_robin_across_flows():
    big, small = object(), object()
    queue = WindowQueue()
    queue.push([QueuedWindow(big, i, 5, 0.0) for i in range(100)])
    queue.push([QueuedWindow(small, 0, 5, 1.0)])
    first = queue.take(10**6, 4, keep_all)
    assert [w.request for w in first] == [big, small, big, big]
    assert queue.flows == 1 and len(queue) == 97
    assert queue.ahead_of(1) == 1 and queue.ahead_of(10) == 10


def test_a_shared_flow_keeps_its_calls_in_order_and_takes_turns():
    a1, a2, b = object(), object(), object()
    queue = WindowQueue()
    queue.push([QueuedWindow(a1, 0, 1, 0.0), QueuedWindow(a1, 1, 1, 0.0)], flow="caller-a")
    queue.push([QueuedWindow(a2, 0, 1, 0.0)], flow="caller-a")
    queue.push([QueuedWindow(b, 0, 1, 0.0)])
    order = [(w.request, w.index) for w in queue.take(10**6, 99, keep_all)]
    assert order == [(a1, 0), (b, 0), (a1, 1), (a2, 0)]
    queue.push([QueuedWindow(a2, 1, 1, 0.0)], flow="caller-a")
    assert queue.discard(a2, "caller-a") == 1 and len(queue) == 0


def test_wait_ahead_of_a_call_joining_its_callers_flow():
    a, b = object(), object()
    queue = WindowQueue()
    queue.push([QueuedWindow(a, i, 1, 0.0) for i in range(5)], flow="caller-a")
    queue.push([QueuedWindow(b, 0, 1, 0.0)])
    assert queue.ahead_of(1) == 2  # a new flow: one turn of each of the two flows
    # behind caller-a's five queued windows: six turns, bounded by what is queued
    assert queue.ahead_of(1, "caller-a") == 6
    assert queue.ahead_of(1, "caller-b") == 2  # a named flow with nothing queued


def test_queued_tokens_follow_push_take_and_discard():
    a, b = object(), object()
    queue = WindowQueue()
    queue.push([QueuedWindow(a, 0, 5, 0.0), QueuedWindow(a, 1, 7, 0.0)])
    queue.push([QueuedWindow(b, 0, 100, 0.0)])
    assert queue.tokens == 112
    assert [w.length for w in queue.take(10**6, 1, keep_all)] == [5]
    assert queue.tokens == 107
    assert queue.discard(b) == 1 and queue.tokens == 7
    queue.take(10**6, 99, lambda item: False)  # skipped windows leave the count too
    assert queue.tokens == 0 and len(queue) == 0
