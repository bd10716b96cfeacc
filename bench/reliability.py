"""Overload, recovery, fairness and memory of a real `wacht serve` (a subprocess), measured.

    python -m bench.reliability [--seconds 10] [--factor 5] [--only overload,fairness,memory]
        [--env KEY=VALUE ...]   # server settings, e.g. --env WACHT_BATCHING__MAX_QUEUE_WAIT_MS=0

1. Capacity: closed loop, one short text per Moderate call, concurrency 16 (calls/s), and
   the unloaded latency (concurrency 1, p50/p99).
2. Overload: open loop at `factor` x capacity for `seconds` (every call with a 10 s
   deadline): the code mix (OK / RESOURCE_EXHAUSTED / other), p50/p99 of the OK calls, OK
   throughput against capacity, how long the RESOURCE_EXHAUSTED took to arrive and what
   their RetryInfo said; then recovery: time from the end of the overload until a lone call
   is back within 2x the unloaded p99 (five in a row).
3. Fairness: one call of 256 texts x 64 KB while a polite client sends one short call every
   200 ms: the polite calls' p50/max latency and the big call's time; then a greedy client
   with twelve 256-text calls at a time against the same polite client. Each role has its
   own API key (the server gets a callers file), so fair queueing is per caller;
   `--anonymous` runs without keys (every call its own flow).
4. Memory: server RSS idle, after one and after three 256 x 64 KB calls at once, and 5 s
   later (pass --env WACHT_BATCHING__MAX_CALL_WINDOWS=0: the default cost cap refuses them).

The load generator shares the machine with the server (2 cores here): compare runs made
one after another on a quiet machine, never against fixed numbers. On a larger machine,
`--server-cpus 0,1` pins the server to those cores (as a 2-CPU pod) and the load generator
to the others, and `--generators N` splits the open-loop overload over N processes, so
the generator is not what limits the offered rate. `--front LIMIT` measures through the
admission front (nginx, service/front.py) with that concurrency limit. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.front import NginxFront
from bench.load import DEFAULT_MODEL, ServerProcess
from wacht.client import AsyncWachtClient
from wacht.service.security import generate_key, hash_key

# One API key per load role; the server gets a callers file with them (unless --anonymous),
# so its fair queueing sees three callers, as it would in production.
KEYS = {who: generate_key() for who in ("bench", "greedy", "polite")}
_use_keys = [True]


def client_for(address: str, who: str = "bench", **options: Any) -> AsyncWachtClient:
    return AsyncWachtClient(address, api_key=KEYS[who] if _use_keys[0] else None, **options)

SHORT = [
    "thanks, that was helpful",
    "you are an idiot and everyone knows it",
    "the weather in the park was lovely today",
    "I will find you and hurt you",
    "what a great film, I loved the ending",
    "shut up, nobody asked you",
]
DEADLINE_S = 10.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process (its threads included; `children`: and of
    its running child processes, a server's workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return own
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                own += cpu_s(int(entry.name))
        except OSError:
            continue
    return own


def long_text(seed: int, size: int = 65000) -> str:
    rng = random.Random(seed)
    words = " ".join(rng.choice(SHORT) for _ in range(size // 20))
    return words[:size]


@dataclass
class Outcome:
    sent: float
    seconds: float
    code: str
    retry_s: float | None = None


@dataclass
class Mix:
    outcomes: list[Outcome] = field(default_factory=list)

    def codes(self) -> Counter[str]:
        return Counter(o.code for o in self.outcomes)

    def ok_ms(self) -> list[float]:
        return [o.seconds * 1000 for o in self.outcomes if o.code == "OK"]


def _retry_s(error: Any) -> float | None:
    from google.rpc import error_details_pb2

    from wacht.client import error_details

    for detail in error_details(error):
        if isinstance(detail, error_details_pb2.RetryInfo):
            return detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
    return None


# What the overload part sends, one text per call (--words N: N-word texts, so that the
# model, not the intake of calls, is what the overload exceeds).
TEXTS: list[str] = []


def overload_texts(words: int) -> list[str]:
    if words <= 0:
        return list(SHORT)
    pool = " ".join(SHORT * (1 + words // 4)).split()
    return [" ".join(pool[i : i + words]) for i in range(len(SHORT))]


async def one_call(client: Any, texts: list[str], timeout: float = DEADLINE_S) -> Outcome:
    import grpc

    sent = time.perf_counter()
    try:
        await client.moderate(texts, timeout=timeout)
        return Outcome(sent, time.perf_counter() - sent, "OK")
    except grpc.aio.AioRpcError as exc:
        return Outcome(sent, time.perf_counter() - sent, exc.code().name, _retry_s(exc))


async def closed_loop(address: str, concurrency: int, seconds: float) -> Mix:
    mix = Mix()
    # several connections (a server's workers are reached per connection), as open_loop
    clients = [client_for(address, own_connection=True) for _ in range(min(4, concurrency))]
    try:
        stop = time.perf_counter() + seconds
        counter = 0

        async def worker(client: Any) -> None:
            nonlocal counter
            while time.perf_counter() < stop:
                counter += 1
                outcome = await one_call(client, [TEXTS[counter % len(TEXTS)]])
                mix.outcomes.append(outcome)
                if outcome.retry_s:  # a polite client waits as told (no retry storm)
                    await asyncio.sleep(outcome.retry_s)

        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.close()
    return mix


async def open_loop(
    address: str, rate: float, seconds: float, after: Any = None, start_at: float = 0.0
) -> tuple[Mix, Any]:
    """`rate` calls/s for `seconds` (from `start_at`, a perf_counter time, if given), each on
    its own task; returns the mix and what `after(time the last call was sent)` returned,
    started at that moment (so it runs while the calls still in flight finish)."""
    mix = Mix()
    tasks: list[asyncio.Task] = []
    channels = 4  # several connections, as many clients would have
    clients = [client_for(address, own_connection=True) for _ in range(channels)]
    try:
        if start_at:
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        started = time.perf_counter()
        sent = 0
        while True:
            now = time.perf_counter()
            if now - started >= seconds:
                break
            due = int((now - started) * rate)
            while sent < due:
                client = clients[sent % channels]
                tasks.append(asyncio.create_task(one_call(client, [TEXTS[sent % len(TEXTS)]])))
                sent += 1
            await asyncio.sleep(0.001)
        probe = asyncio.create_task(after(time.perf_counter())) if after else None
        mix.outcomes = list(await asyncio.gather(*tasks))
        return mix, (await probe if probe else None)
    finally:
        for client in clients:
            await client.close()


def _generator(job: tuple[str, float, float, float, list[str], dict[str, str], bool]
               ) -> tuple[list[Outcome], float]:
    """One load-generator process: its share of the open loop; its outcomes and CPU s."""
    address, rate, seconds, start_at, texts, keys, use_keys = job
    TEXTS[:] = texts
    KEYS.update(keys)  # the parent's keys: a spawned process would draw new ones
    _use_keys[0] = use_keys
    cpu = cpu_s(os.getpid())
    mix, _ = asyncio.run(open_loop(address, rate, seconds, start_at=start_at))
    return mix.outcomes, cpu_s(os.getpid()) - cpu


async def open_loop_processes(
    address: str, rate: float, seconds: float, generators: int, after: Any
) -> tuple[Mix, Any, float]:
    """The open loop split over `generators` processes starting together; the mix, what
    `after` returned (started when the last call was due) and the generators' CPU seconds."""
    start_at = time.perf_counter() + 2.0  # time for the processes to start and connect
    job = (address, rate / generators, seconds, start_at, TEXTS, KEYS, _use_keys[0])
    context = multiprocessing.get_context("spawn")
    with context.Pool(generators) as pool:
        pending = pool.map_async(_generator, [job] * generators)
        await asyncio.sleep(max(0.0, start_at + seconds - time.perf_counter()))
        probe = await after(time.perf_counter())
        results = await asyncio.to_thread(pending.get)
    mix = Mix([o for outcomes, _ in results for o in outcomes])
    return mix, probe, sum(cpu for _, cpu in results)


async def recovery(address: str, since: float, normal_ms: float, limit_s: float = 30.0) -> float:
    """Seconds from `since` until five lone calls in a row finish within `normal_ms`."""
    good = 0
    async with client_for(address) as client:
        while time.perf_counter() - since < limit_s:
            outcome = await one_call(client, [TEXTS[0]], timeout=limit_s)
            good = good + 1 if outcome.code == "OK" and outcome.seconds * 1000 <= normal_ms else 0
            if good == 5:
                return time.perf_counter() - since
    return float("inf")


def served_codes(metrics_port: int) -> Counter[str]:
    """The server's own count of answered Moderate calls by code (its metrics endpoint)."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = re.match(r'wacht_requests_total\{(.*)\} ([0-9.e+]+)$', line)
        if m and 'method="Moderate"' in m.group(1):
            code = re.search(r'code="([A-Z_]+)"', m.group(1))
            if code:
                counts[code.group(1)] += int(float(m.group(2)))
    return counts


async def bench_overload(address: str, seconds: float, factor: float,
                         metrics_port: int = 0, server_pid: int = 0,
                         generators: int = 1, front_pid: int = 0) -> None:
    await closed_loop(address, 4, 1.0)  # warm up
    capacity_mix = await closed_loop(address, 16, 5.0)
    capacity = sum(1 for o in capacity_mix.outcomes if o.code == "OK") / 5.0
    idle = await closed_loop(address, 1, 3.0)
    unloaded = idle.ok_ms()
    print(f"texts: {len(TEXTS[0].split())} words per call; "
          f"capacity: {capacity:.0f} calls/s (c=16, {dict(capacity_mix.codes())}); "
          f"unloaded p50 {pct(unloaded, .5):.1f} ms p99 {pct(unloaded, .99):.1f} ms", flush=True)
    rate = capacity * factor
    normal_ms = 2 * pct(unloaded, .99)
    before = served_codes(metrics_port) if metrics_port else Counter()
    cpu_before = (cpu_s(server_pid, True) if server_pid else 0.0, cpu_s(os.getpid()),
                  time.perf_counter(), cpu_s(front_pid, True) if front_pid else 0.0)
    generator_cpu = 0.0
    if generators > 1:
        mix, seconds_to_normal, generator_cpu = await open_loop_processes(
            address, rate, seconds, generators,
            lambda since: recovery(address, since, normal_ms))
    else:
        mix, seconds_to_normal = await open_loop(
            address, rate, seconds, lambda since: recovery(address, since, normal_ms))
    wall = time.perf_counter() - cpu_before[2]
    server_cores = (cpu_s(server_pid, True) - cpu_before[0]) / wall if server_pid else float("nan")
    client_cores = (cpu_s(os.getpid()) - cpu_before[1] + generator_cpu) / wall
    front_cores = (cpu_s(front_pid, True) - cpu_before[3]) / wall if front_pid else 0.0
    codes = mix.codes()
    total = sum(codes.values())
    ok = mix.ok_ms()
    shed = [o for o in mix.outcomes if o.code == "RESOURCE_EXHAUSTED"]
    ok_or_shed = (codes["OK"] + codes["RESOURCE_EXHAUSTED"]) / max(1, total)
    print(f"overload {factor:g}x ({rate:.0f} calls/s offered for {seconds:g} s, {total} calls): "
          f"codes {dict(codes)}; OK or RESOURCE_EXHAUSTED {ok_or_shed:.1%}", flush=True)
    print(f"  OK p50 {pct(ok, .5):.1f} ms p99 {pct(ok, .99):.1f} ms "
          f"(= {pct(ok, .99) / max(pct(unloaded, .99), 1e-9):.1f}x unloaded p99); "
          f"OK throughput {codes['OK'] / seconds:.0f}/s "
          f"= {codes['OK'] / seconds / max(capacity, 1e-9):.0%} of capacity", flush=True)
    if shed:
        waits = [o.seconds * 1000 for o in shed]
        retries = [o.retry_s for o in shed if o.retry_s is not None]
        print(f"  RESOURCE_EXHAUSTED arrived after p50 {pct(waits, .5):.1f} ms "
              f"p99 {pct(waits, .99):.1f} ms; RetryInfo p50 {pct(retries, .5):.3f} s "
              f"max {max(retries, default=float('nan')):.3f} s", flush=True)
    print(f"  recovery: {seconds_to_normal:.2f} s after the overload stopped until lone calls "
          f"were within 2x the unloaded p99", flush=True)
    server_of = len(os.sched_getaffinity(server_pid)) if server_pid else os.cpu_count()
    front = f" + admission front {front_cores:.2f}" if front_pid else ""
    print(f"  CPU while offered and recovering: server {server_cores:.2f}{front} cores (of "
          f"{server_of} it may use), load generator ({generators} process"
          f"{'es' if generators > 1 else ''}) {client_cores:.2f} cores (of "
          f"{len(os.sched_getaffinity(0))})", flush=True)
    if metrics_port:
        served = served_codes(metrics_port) - before
        where = "were refused by the admission front or " if front_pid else ""
        print(f"  the server's own count of those calls (and the recovery probe's): "
              f"{dict(served)}; {total - sum(served.values())} {where}never reached the "
              f"service code", flush=True)


async def bench_fairness(address: str) -> None:
    big = [long_text(i) for i in range(256)]
    async with client_for(address, "greedy", timeout=600) as greedy_client, \
            client_for(address, "polite", timeout=600) as polite_client:
        polite: list[Outcome] = []
        big_task = asyncio.create_task(one_call(greedy_client, big, timeout=600))
        await asyncio.sleep(0.5)
        while not big_task.done():
            polite.append(await one_call(polite_client, [SHORT[1]]))
            await asyncio.sleep(0.2)
        result = big_task.result()
        ms = [o.seconds * 1000 for o in polite if o.code == "OK"]
        print(f"fairness ({'callers by API key' if _use_keys[0] else 'anonymous'}): one "
              f"256 x 64 KB call {result.code} in {result.seconds:.1f} s; "
              f"{len(polite)} polite calls meanwhile: {Counter(o.code for o in polite)} "
              f"p50 {pct(ms, .5):.0f} ms max {max(ms, default=float('nan')):.0f} ms", flush=True)

        polite = []
        stop = asyncio.Event()

        async def greedy() -> Counter[str]:
            seen: Counter[str] = Counter()
            texts = [long_text(i, 2000) for i in range(256)]
            while not stop.is_set():
                batch = await asyncio.gather(
                    *(one_call(greedy_client, texts, 60) for _ in range(12)))
                seen.update(o.code for o in batch)
            return seen

        greedy_task = asyncio.create_task(greedy())
        started = time.perf_counter()
        while time.perf_counter() - started < 15:
            polite.append(await one_call(polite_client, [SHORT[2]]))
            await asyncio.sleep(0.2)
        stop.set()
        greedy_codes = await greedy_task
        ms = [o.seconds * 1000 for o in polite if o.code == "OK"]
        print(f"  greedy (12 x 256 texts x 2 KB at a time) {dict(greedy_codes)}; polite (5/s) "
              f"{dict(Counter(o.code for o in polite))} p50 {pct(ms, .5):.0f} ms "
              f"p99 {pct(ms, .99):.0f} ms", flush=True)


async def bench_memory(address: str, pid: int) -> None:
    idle = rss_mb(pid)
    big = [long_text(i) for i in range(256)]
    async with client_for(address, timeout=900) as client:
        for calls in (1, 3):
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(one_call(client, big, 900) for _ in range(calls)))
            took = time.perf_counter() - started
            after = rss_mb(pid)
            await asyncio.sleep(5)
            later = rss_mb(pid)
            print(f"memory: RSS idle {idle:.0f} MB; {calls} x (256 x 64 KB) at once "
                  f"({dict(Counter(o.code for o in outcomes))}, {took:.0f} s) -> {after:.0f} MB, "
                  f"{later:.0f} MB 5 s later", flush=True)


async def main_async(args: argparse.Namespace) -> None:
    env = dict(item.split("=", 1) for item in args.env)
    _use_keys[0] = not args.anonymous
    TEXTS[:] = overload_texts(args.words)
    if _use_keys[0]:
        callers = Path(tempfile.mkdtemp()) / "callers.json"
        callers.write_text(json.dumps({"callers": [
            {"name": who, "key_sha256": [hash_key(key)]} for who, key in KEYS.items()]}))
        env.setdefault("WACHT_AUTH__KEYS_FILE", str(callers))
    from bench.load import _free_port

    metrics_port = int(env.setdefault("WACHT_METRICS_PORT", str(_free_port())))
    every_cpu = os.sched_getaffinity(0)
    server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else every_cpu
    if not server_cpus <= every_cpu or (args.server_cpus and server_cpus == every_cpu):
        raise SystemExit(f"--server-cpus {args.server_cpus}: must be a proper subset of "
                         f"this process's CPUs {sorted(every_cpu)}")
    os.sched_setaffinity(0, server_cpus)  # the server (and its front) inherit these ...
    server = ServerProcess(Path(args.model), env)
    # one limit: the load roles hold one API key each, so per_caller would be the limit
    front = NginxFront(server.address, args.front, args.front) if args.front else None
    address = front.address if front else server.address
    if front:
        print(f"admission front (nginx, service/front.py): {args.front} scoring calls in "
              f"flight", flush=True)
    if args.server_cpus:
        os.sched_setaffinity(0, every_cpu - server_cpus)  # ... the generators the rest
        print(f"server pinned to CPUs {sorted(server_cpus)}, load generators to "
              f"{sorted(every_cpu - server_cpus)}", flush=True)
    try:
        await server.wait_serving()
        only = set(args.only.split(","))
        if "overload" in only:
            await bench_overload(address, args.seconds, args.factor, metrics_port,
                                 server.process.pid, args.generators,
                                 front.process.pid if front else 0)
        if "fairness" in only:
            await bench_fairness(address)
        if "memory" in only:
            await bench_memory(address, server.process.pid)
    finally:
        if front:
            front.stop()
        server.stop()


def parse_cpus(spec: str) -> set[int]:
    """`0,1` or `0-3,8` -> a set of CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--only", default="overload,fairness,memory")
    parser.add_argument("--words", type=int, default=0,
                        help="overload: N-word texts instead of the short ones (0)")
    parser.add_argument("--anonymous", action="store_true",
                        help="no callers file: every call is its own fair-queueing flow")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--server-cpus", default="",
                        help="pin the server to these CPUs (e.g. 0,1 or 0-3) and the load "
                             "generators to the others")
    parser.add_argument("--front", type=int, default=0, metavar="LIMIT",
                        help="put the admission front (nginx, `wacht front-config`) with this "
                             "concurrency limit in front of the server (0 = none)")
    parser.add_argument("--generators", type=int, default=1,
                        help="overload: split the open loop over N processes (1)")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

