"""Side-by-side benchmark of Wacht against real peers (issue 5): one command, one stack at a time.

    bash bench/peers/setup.sh                               # once: the peers' environments
    bench/.venv-bench/bin/python bench/peers/run.py --models /tmp/wacht-peer-models
    bench/.venv-bench/bin/python bench/peers/run.py --models /tmp/wacht-peer-models --smoke

For each repeat and each workload (one-task, moderation), first the ceiling: raw in-process
onnxruntime (bench.ceiling, the project's .venv) on Wacht's ONNX file for that workload, pinned
to the server CPUs with one intra-op thread per server CPU, same corpus, same truncation, at
its best batch size. Then each stack in turn (A B C D, A B C D, ...): start the stack's
server on 127.0.0.1 pinned to the server CPUs, wait until it answers, warm it up (including a
text past the model window), run the closed-loop and open-loop points with 1-text and 32-text
calls, record throughput, p50/p99 and the peak RSS of its process tree, then stop it
(SIGTERM, SIGKILL for what ignores it). This process, the load client, pins itself to the
client CPUs. Writes OUT/raw/peers-raw.json (every latency) and OUT/peers.{json,md},
OUT/peers-throughput.png, OUT/peers-latency-cdf.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # quiet the client's fork notices

from bench.peers.loops import closed_loop, open_loop  # noqa: E402
from bench.peers.report import write_report  # noqa: E402
from bench.peers.stacks import REPO, STACKS, Models, RssSampler, make_client, make_server  # noqa: E402
from bench.peers.texts import describe, find_data, load_texts  # noqa: E402

WORKLOADS = ("one-task", "moderation")
MODERATION_TASKS = ["sentiment", "toxicity"]
CHECK_TEXTS = ["You are a complete idiot and everyone hates you.", "What a lovely, sunny day!",
               "I don't think this movie was any good.", "Thanks for the help, much appreciated."]
LIVE: set = set()  # servers started and not yet stopped
LONG_TEXT = " ".join(["this comment keeps going and going without any end in sight"] * 90)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def manifest_max_length(model_dir: Path) -> int | None:
    manifest = model_dir / "manifest.yaml"
    if manifest.exists():
        m = re.search(r"^max_length:\s*(\d+)", manifest.read_text(), re.MULTILINE)
        if m:
            return int(m.group(1))
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report-only", type=Path, default=None, metavar="RAW_JSON",
                   help="only rebuild the tables and plots in --out from a raw JSON of a run")
    p.add_argument("--models", type=Path, default=None,
                   help="folder from prepare_models.py: hf/<task>/ and onnx/<task>/")
    p.add_argument("--wacht-model", type=Path, default=REPO / "models" / "minilm-moderation",
                   help="Wacht model directory for full moderation")
    p.add_argument("--wacht-one-task-model", type=Path, default=None,
                   help="Wacht model directory for one-task (default --wacht-model); e.g. "
                        "`wacht models import` of the same HF export the peers serve")
    p.add_argument("--wacht-env", action="append", default=[], metavar="WACHT_KEY=VALUE",
                   help="extra Wacht configuration (environment overrides), repeatable")
    p.add_argument("--wacht-truncation", choices=("head", "window"), default="head",
                   help="head = the same work as the peers, which truncate")
    p.add_argument("--task", default="toxicity", help="the head of the one-task workload")
    p.add_argument("--stacks", default=",".join(STACKS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--concurrency", type=ints, default=ints("1,4,16,64,256"))
    p.add_argument("--batch-concurrency", type=ints, default=ints("1,4,16,64"),
                   help="closed-loop concurrency for calls of more than one text")
    p.add_argument("--texts-per-call", type=ints, default=ints("1,32"))
    p.add_argument("--rates", default="auto",
                   help="open-loop calls/s, comma-separated, or `auto`: --rate-fractions of the "
                        "first stack's best closed-loop calls/s in the first repeat")
    p.add_argument("--rate-fractions", type=floats, default=floats("0.25,0.5,0.75,1.0,1.25"))
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per point")
    p.add_argument("--max-requests", type=int, default=20000, help="calls per point at most")
    p.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, seconds")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--client-cpus", type=ints, default=None, help="default: CPU 0")
    p.add_argument("--server-cpus", type=ints, default=None, help="default: all other CPUs")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--corpus", type=int, default=4096, help="texts drawn from ../shared/data")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the raw onnxruntime ceiling before each workload")
    p.add_argument("--ceiling-texts", type=int, default=512, help="texts the ceiling scores")
    p.add_argument("--smoke", action="store_true",
                   help="seconds per stack: check every stack starts and answers; writes under "
                        "OUT/raw/smoke")
    args = p.parse_args(argv)
    if args.models is None and args.report_only is None:
        p.error("--models is required (the folder prepare_models.py wrote)")
    if args.smoke:
        args.concurrency, args.batch_concurrency = [1, 4], [1]
        args.rates, args.duration, args.max_requests, args.repeats = "2", 1.0, 10, 1
        args.ceiling_texts = 32
        args.out = args.out / "raw" / "smoke"
    return args


async def wait_ready(server, new_client, workload: str, timeout: float) -> str | None:
    """None once the stack answers every model of the workload, else why not. Each probe uses
    a fresh client: a gRPC channel refused while the server was starting stays in back-off."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            return f"exited with {server.proc.returncode} before answering"
        probe = new_client()
        try:
            call = probe.moderation if workload == "moderation" else probe.one_task
            await asyncio.wait_for(call(["ready?"]), 10)
            return None
        except Exception as exc:  # not up yet
            last = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            await probe.close()
        await asyncio.sleep(1.0)
    return f"not ready after {timeout:.0f} s ({last})"


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def workload_model(args: argparse.Namespace, models: Models, workload: str) -> Path:
    if workload == "one-task" and args.wacht_one_task_model:
        return args.wacht_one_task_model.resolve()
    return models.wacht_dir


async def run_ceiling(args: argparse.Namespace, model_dir: Path, workload: str, repeat: int,
                      corpus: Path, server_cpus: set[int]) -> dict:
    """bench.ceiling in a child process on the server CPUs; its result, or why it failed."""
    tag = f"[repeat {repeat} · {workload} · ceiling]"
    argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "bench.ceiling", "--model",
            str(model_dir), "--texts-file", str(corpus), "--texts", str(args.ceiling_texts),
            "--threads", str(len(server_cpus)), "--truncation", args.wacht_truncation, "--json"]
    print(f"{tag} raw onnxruntime on {model_dir.name} ...", flush=True)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, server_cpus))
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    found = re.search(r"^CEILING_JSON (.*)$", text, re.MULTILINE)
    entry: dict = {"repeat": repeat, "workload": workload, "model": str(model_dir)}
    if proc.returncode != 0 or not found:
        entry["error"] = f"exit {proc.returncode}: {text[-400:]}"
        print(f"{tag} failed: {entry['error']}", flush=True)
        return entry
    entry.update(json.loads(found.group(1)))
    print(f"{tag} {entry['throughput']:.1f} texts/s at batch {entry['best_batch_size']}, "
          f"single-text p50 {entry['single_p50_ms']:.2f} ms", flush=True)
    return entry


async def run_stack(args, stack: str, workload: str, repeat: int, models: Models,
                    texts: list[str], rates: dict, raw: dict, server_cpus: set[int]) -> None:
    tasks = [args.task] if workload == "one-task" else MODERATION_TASKS
    wl_models = Models(workload_model(args, models, workload), models.hf, models.onnx,
                       models.max_length)
    wacht_env = dict(item.split("=", 1) for item in args.wacht_env)
    server = make_server(stack, wl_models, tasks, server_cpus, args.out / "raw" / "logs",
                         f"r{repeat}-{workload}", wacht_env)
    tag = f"[repeat {repeat} · {workload} · {stack}]"
    print(f"{tag} starting: {' '.join(server.argv[:3])} ...", flush=True)
    t0 = time.monotonic()
    LIVE.add(server)
    server.start()

    def new_client():
        return make_client(server, args.task, tasks, wl_models, args.wacht_truncation,
                           args.timeout)

    client = None
    try:
        why = await wait_ready(server, new_client, workload, args.ready_timeout)
        if why:
            fail(raw, stack, workload, repeat, why, server, tag)
            return
        startup_s = time.monotonic() - t0
        client = new_client()
        call = client.moderation if workload == "moderation" else client.one_task
        with RssSampler(server) as rss:
            checks = raw["checks"].setdefault(f"{workload}/{stack}", {})
            checks["startup_s"] = round(startup_s, 1)
            checks["idle_rss_mb"] = round(server.rss_bytes() / 2**20, 1)
            checks["scores"] = [{k: round(v, 5) for k, v in s.items()}
                                for s in await call(CHECK_TEXTS)]
            for per_call in sorted(set(args.texts_per_call)):   # warm-up
                await call(texts[:per_call])
            try:
                await asyncio.wait_for(call([LONG_TEXT]), args.timeout)
                checks["long_text"] = "answered"
            except Exception as exc:
                checks["long_text"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            try:
                await asyncio.wait_for(call(["short text after the long one"]), 30)
                checks["after_long_text"] = "answered"
            except Exception as exc:
                checks["after_long_text"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            print(f"{tag} ready in {startup_s:.1f} s, idle RSS {checks['idle_rss_mb']} MB, "
                  f"long text: {checks['long_text']}, then: {checks['after_long_text']}",
                  flush=True)
            for per_call in args.texts_per_call:
                levels = args.concurrency if per_call == 1 else args.batch_concurrency
                for concurrency in levels:
                    rss.reset()
                    point = await closed_loop(call, texts, concurrency, per_call, args.duration,
                                              args.max_requests)
                    record(raw, repeat, workload, stack, point, rss, tag)
                    await settle(call, args.timeout)
                key = f"{workload}/{per_call}"
                if not rates.get(key):   # set once, by the first stack that ran: same for all
                    if args.rates == "auto":
                        best = max((r["point"]["calls_per_s"] for r in raw["records"]
                                    if r["stack"] == stack and r["workload"] == workload
                                    and r["point"]["texts_per_call"] == per_call), default=0)
                        rates[key] = [round(best * f, 2) for f in args.rate_fractions
                                      if best * f > 0]
                    else:
                        rates[key] = floats(args.rates)
                for rate in rates[key]:
                    rss.reset()
                    point = await open_loop(call, texts, rate, per_call, args.duration,
                                            args.max_requests, drain_s=args.timeout)
                    record(raw, repeat, workload, stack, point, rss, tag)
                    await settle(call, args.timeout)
            checks["peak_rss_mb"] = round(rss.peak / 2**20, 1)
            checks["peak_pss_mb"] = round(rss.peak_pss / 2**20, 1)
    except Exception as exc:  # a stack that breaks mid-run is a finding, not the end of the run
        fail(raw, stack, workload, repeat, f"{type(exc).__name__}: {str(exc)[:300]}", server, tag)
    finally:
        if client is not None:
            await client.close()
        how = server.stop()
        LIVE.discard(server)
        raw["checks"].setdefault(f"{workload}/{stack}", {})["stopped_by"] = how
        print(f"{tag} stopped ({how})", flush=True)


def fail(raw: dict, stack: str, workload: str, repeat: int, why: str, server, tag: str) -> None:
    alive = "server still running" if server.alive() else "server process gone"
    raw["failures"].append({"stack": stack, "workload": workload, "repeat": repeat,
                            "why": f"{why} ({alive})", "log": str(server.log),
                            "log_tail": log_tail(server.log)})
    print(f"{tag} FAILED: {why} ({alive})\n{log_tail(server.log)}", flush=True)


async def settle(call, timeout: float) -> None:
    """Wait until the stack has worked off what the last point left queued (calls the client
    gave up on may still be in a server's queue), so it does not slow the next point."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(call(["settle"]), timeout * 2)


def record(raw: dict, repeat: int, workload: str, stack: str, point, rss: RssSampler,
           tag: str) -> None:
    summary = point.summary()
    rss_peak = rss.peak
    raw["records"].append({"repeat": repeat, "workload": workload, "stack": stack,
                           "point": summary, "rss_peak": rss_peak, "pss_peak": rss.peak_pss,
                           "latencies_ms": [round(x, 3) for x in point.latencies_ms]})
    errs = {k: v for k, v in summary["errors"].items() if v}
    print(f"{tag} {summary['mode']} {summary['level']:g} x{summary['texts_per_call']}: "
          f"{summary['texts_per_s']} texts/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']}"
          f" ms, RSS {rss_peak / 2**20:.0f} MB{', errors ' + str(errs) if errs else ''}",
          flush=True)


def agreement(checks: dict) -> dict[str, float]:
    """Largest score difference between stacks on the check texts, per workload, over the
    labels both report (Wacht's moderation reports categories: `toxicity` for `offensive`).
    Near 0 when they serve the same weights; Wacht serves the same file in one-task only when
    given a directory around the peers' export (prepare_models' wacht/<task>)."""
    out = {}
    for workload in WORKLOADS:
        peers = {k.split("/")[1]: v["scores"] for k, v in checks.items()
                 if k.startswith(workload + "/") and "scores" in v}
        names = sorted(peers)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                diffs = [abs(sa[label] - sb[label]) for sa, sb in zip(peers[a], peers[b],
                         strict=True) for label in sa if label in sb]
                if diffs:
                    out[f"{workload}: {a} vs {b}"] = round(max(diffs), 6)
    return out


async def main_async(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    client_cpus = set(args.client_cpus or cpus[:1])
    server_cpus = set(args.server_cpus or [c for c in cpus if c not in client_cpus] or cpus)
    os.sched_setaffinity(0, client_cpus)
    data = args.data or find_data()
    if not data.is_dir():
        print(f"no benchmark data at {data} (../shared/data)", file=sys.stderr)
        return 2
    texts = load_texts(data, args.corpus)
    max_length = manifest_max_length(args.wacht_model) or 512
    models = Models(
        wacht_dir=args.wacht_model.resolve(),
        hf={t: (args.models / "hf" / t).resolve() for t in {args.task, *MODERATION_TASKS}},
        onnx={t: (args.models / "onnx" / t).resolve() for t in {args.task, *MODERATION_TASKS}},
        max_length=max_length,
    )
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    raw = {"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "argv": sys.argv[1:], "stacks": stacks, "workloads": workloads,
                    "repeats": args.repeats, "duration_s": args.duration,
                    "client_cpus": sorted(client_cpus), "server_cpus": sorted(server_cpus),
                    "corpus": describe(texts), "max_length": max_length,
                    "wacht_truncation": args.wacht_truncation, "task": args.task,
                    "models": str(args.models.resolve()), "wacht_model": str(models.wacht_dir),
                    "smoke": args.smoke},
           "records": [], "failures": [], "checks": {}, "ceilings": []}
    corpus_path = args.out / "raw" / "corpus.json"
    corpus_path.parent.mkdir(parents=True, exist_ok=True)
    corpus_path.write_text(json.dumps(texts))
    print(f"client on CPUs {sorted(client_cpus)}, servers on CPUs {sorted(server_cpus)}; "
          f"corpus {raw['meta']['corpus']}", flush=True)
    rates: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for workload in workloads:
            if args.ceiling:
                model_dir = workload_model(args, models, workload)
                raw["ceilings"].append(await run_ceiling(args, model_dir, workload, repeat,
                                                         corpus_path, server_cpus))
            for stack in stacks:
                await run_stack(args, stack, workload, repeat, models, texts, rates, raw,
                                server_cpus)
                await asyncio.sleep(2.0)  # let the last server's memory and sockets go
    raw["checks"]["agreement_max_abs_diff"] = agreement(raw["checks"])
    raw["meta"]["open_loop_rates"] = rates
    raw_path = args.out / "raw" / "peers-raw.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw))
    for path in write_report(raw, args.out):
        print(f"wrote {path}")
    print(f"wrote {raw_path}")
    print(json.dumps(raw["checks"]["agreement_max_abs_diff"], indent=1))
    return 1 if raw["failures"] else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # asyncio.run then cancels the run, and every server is stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args()
    if args.report_only:
        for path in write_report(json.loads(args.report_only.read_text()), args.out):
            print(f"wrote {path}")
        return
    try:
        code = asyncio.run(main_async(args))
    finally:
        for server in list(LIVE):   # belt and braces: no stray servers, whatever happened
            server.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
