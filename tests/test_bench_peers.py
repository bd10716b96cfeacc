"""Pure-logic checks of the peers benchmark harness (bench/peers): load loops with a fake call,
report ratios, the text mix. The peers themselves are exercised by `run.py --smoke`, not here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.peers.loops import closed_loop, open_loop
from bench.peers.report import aggregate, ceiling_markdown, ceiling_summary, markdown
from bench.peers.texts import describe, load_texts

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEXTS = [f"text {i}" for i in range(10)]


def _fake(delay_s: float, fail_every: int = 0):
    seen: list[list[str]] = []

    async def call(texts: list[str]) -> None:
        seen.append(texts)
        index = len(seen)
        await asyncio.sleep(delay_s)
        if fail_every and index % fail_every == 0:
            raise RuntimeError("boom")

    return call, seen


async def test_closed_loop_is_bounded_by_requests_and_counts_errors() -> None:
    call, seen = _fake(0.001, fail_every=4)
    result = await closed_loop(call, TEXTS, concurrency=3, per_call=2, duration_s=30,
                               max_requests=20)
    summary = result.summary()
    assert summary["requests"] == 20 == len(seen)
    assert summary["errors"] == {"RuntimeError": 5}
    assert summary["ok"] == 15 and result.texts_ok == 30
    assert all(len(texts) == 2 for texts in seen)
    assert summary["p50_ms"] is not None and summary["p50_ms"] >= 1.0


async def test_closed_loop_stops_at_its_duration() -> None:
    call, _ = _fake(0.01)
    result = await closed_loop(call, TEXTS, concurrency=2, per_call=1, duration_s=0.2,
                               max_requests=10_000)
    assert 0 < result.requests < 100
    assert result.elapsed_s < 2.0


async def test_open_loop_sends_on_schedule_and_sheds_over_the_cap() -> None:
    call, _ = _fake(0.5)   # slower than the arrivals: calls pile up
    result = await open_loop(call, TEXTS, rate=100, per_call=1, duration_s=0.2,
                             max_requests=1000, max_inflight=5, drain_s=5)
    assert result.requests == 20            # 100/s for 0.2 s, whatever the answers do
    assert result.errors["SHED"] == 15      # only 5 may be outstanding
    assert result.ok == 5
    assert min(result.latencies_ms) >= 500  # measured from the scheduled start


async def test_open_loop_cancels_calls_past_the_drain() -> None:
    call, _ = _fake(10)
    result = await open_loop(call, TEXTS, rate=10, per_call=1, duration_s=0.3,
                             max_requests=100, drain_s=0.2)
    assert result.errors["DRAIN_TIMEOUT"] == result.requests == 3
    assert result.ok == 0


def _record(stack: str, repeat: int, tput: float, p99: float, rss: int) -> dict:
    point = {"mode": "closed", "level": 4, "texts_per_call": 1, "requests": 10, "ok": 10,
             "errors": {}, "texts_per_s": tput, "p50_ms": p99 / 2, "p99_ms": p99}
    return {"repeat": repeat, "workload": "one-task", "stack": stack, "point": point,
            "rss_peak": rss, "pss_peak": rss}


def test_ratios_are_taken_within_a_repeat_then_medianed() -> None:
    # repeat 1 runs twice as fast for both stacks: the same-run ratio stays 0.5
    records = [_record("wacht", 0, 100, 10, 200 << 20), _record("naive", 0, 50, 40, 400 << 20),
               _record("wacht", 1, 200, 5, 200 << 20), _record("naive", 1, 100, 20, 400 << 20),
               _record("wacht", 2, 120, 9, 200 << 20), _record("naive", 2, 60, 36, 400 << 20)]
    rows = {r["stack"]: r for r in aggregate(records)}
    assert rows["naive"]["vs_wacht"] == {"texts_per_s": 0.5, "p50_ms": 4.0, "p99_ms": 4.0,
                                         "rss": 2.0}
    assert rows["naive"]["texts_per_s"] == 60 and rows["wacht"]["texts_per_s"] == 120
    assert rows["wacht"]["rss_mb"] == 200
    table = markdown(list(rows.values()), {"repeats": 3}, [])
    assert "| 4 | naive | 60 | 0.5 |" in table


def test_ceiling_fraction_is_per_repeat_and_worst_over_concurrency() -> None:
    # repeat 1's machine is twice as fast: Wacht's fraction of that repeat's ceiling is unchanged
    records = [_record("wacht", 0, 90, 10, 1), _record("wacht", 1, 180, 10, 1),
               _record("naive", 0, 999, 10, 1)]   # peers never count against the ceiling
    slow = _record("wacht", 0, 50, 10, 1)
    slow["point"] = {**slow["point"], "level": 16}
    slow_1 = _record("wacht", 1, 100, 10, 1)
    slow_1["point"] = {**slow_1["point"], "level": 16}
    lone = _record("wacht", 0, 10, 10, 1)
    lone["point"] = {**lone["point"], "level": 1}  # below concurrency 4: not part of the target
    ceilings = [{"workload": "one-task", "repeat": 0, "throughput": 100.0, "best_batch_size": 1,
                 "single_p50_ms": 5.0},
                {"workload": "one-task", "repeat": 1, "throughput": 200.0, "best_batch_size": 2,
                 "single_p50_ms": 3.0},
                {"workload": "moderation", "repeat": 0, "error": "exit 1: boom"}]
    [row] = ceiling_summary([*records, slow, slow_1, lone], ceilings)
    assert row["wacht_fraction_max"] == 0.9 and row["wacht_fraction_min"] == 0.5
    assert row["ceiling_texts_per_s"] == 150 and row["best_batch_sizes"] == [1, 2]
    table = "\n".join(ceiling_markdown([row], ceilings))
    assert "| one-task | 1 | 150.0 | [1, 2] | 4.0 | 0.50 | 0.90 | ≥ 0.9 | NO |" in table
    assert "ceiling failed (moderation, repeat 0): exit 1: boom" in table


@pytest.mark.data
def test_text_mix_has_short_texts_and_a_long_tail() -> None:
    if not DATA.is_dir():
        pytest.skip("../shared/data is absent")
    texts = load_texts(DATA, count=4096)
    assert texts == load_texts(DATA, count=4096)  # seeded: every stack sees the same texts
    stats = describe(texts)
    assert stats["words_p50"] < 40
    assert stats["words_max"] > 400   # past 512 tokens: exercises truncation
