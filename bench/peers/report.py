"""Tables (markdown), summary JSON and PNGs from the raw records of run.py (bench/.venv-bench).

Every figure is the median over repeats; every ratio is taken within one repeat (stack / Wacht,
same workload, same point) and then the median of those ratios is quoted, because speeds on a
shared machine drift between runs minutes apart.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

MB = 1024 * 1024


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def aggregate(records: list[dict]) -> list[dict]:
    """One row per (workload, texts_per_call, mode, level, stack)."""
    by_point: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        if "point" not in rec:
            continue
        p = rec["point"]
        key = (rec["workload"], p["texts_per_call"], p["mode"], p["level"], rec["stack"])
        by_point[key].append(rec)
    wacht = {(k[0], k[1], k[2], k[3], r["repeat"]): r for k, recs in by_point.items()
             if k[4] == "wacht" for r in recs}
    rows = []
    for key, recs in sorted(by_point.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                               kv[0][3], kv[0][4])):
        workload, per_call, mode, level, stack = key
        ratios: dict[str, list[float]] = defaultdict(list)
        for r in recs:
            w = wacht.get((workload, per_call, mode, level, r["repeat"]))
            if not w:
                continue
            for metric, field in (("texts_per_s", "texts_per_s"), ("p50_ms", "p50_ms"),
                                  ("p99_ms", "p99_ms")):
                a, b = r["point"][field], w["point"][field]
                if a and b:
                    ratios[metric].append(a / b)
            if r.get("rss_peak") and w.get("rss_peak"):
                ratios["rss"].append(r["rss_peak"] / w["rss_peak"])
        errors: dict[str, int] = defaultdict(int)
        for r in recs:
            for kind, n in r["point"]["errors"].items():
                errors[kind] += n
        rows.append({
            "workload": workload, "texts_per_call": per_call, "mode": mode, "level": level,
            "stack": stack, "repeats": len(recs),
            "texts_per_s": _median([r["point"]["texts_per_s"] for r in recs]),
            "p50_ms": _median([r["point"]["p50_ms"] for r in recs]),
            "p99_ms": _median([r["point"]["p99_ms"] for r in recs]),
            "rss_mb": _median([r["rss_peak"] / MB if r.get("rss_peak") else None for r in recs]),
            "pss_mb": _median([r["pss_peak"] / MB if r.get("pss_peak") else None for r in recs]),
            "errors": dict(errors),
            "requests": sum(r["point"]["requests"] for r in recs),
            "vs_wacht": {m: round(statistics.median(v), 3) for m, v in ratios.items()},
        })
    return rows


# issue 5: one task — ahead of every peer at every concurrency >= 4 (aim 1.3x), p99 no worse;
# full moderation — at least 2x every peer
TARGETS = {"one-task": 1.0, "moderation": 2.0}


def targets(rows: list[dict]) -> list[str]:
    """Per workload, call size and peer: the worst same-run ratios over closed-loop
    concurrency >= 4, against the issue's targets."""
    out = ["## Against the targets (closed loop, concurrency ≥ 4, worst point)", "",
           "| workload | texts/call | peer | Wacht÷peer texts/s (min) | peer÷Wacht p99 (min) | "
           "peer÷Wacht RSS (min) | target | met |",
           "|---|---:|---|---:|---:|---:|---:|---|"]
    keys = sorted({(r["workload"], r["texts_per_call"], r["stack"]) for r in rows
                   if r["stack"] != "wacht" and r["mode"] == "closed"})
    for workload, per_call, stack in keys:
        pts = [r["vs_wacht"] for r in rows if (r["workload"], r["texts_per_call"], r["stack"])
               == (workload, per_call, stack) and r["mode"] == "closed" and r["level"] >= 4]
        tput = [1 / v["texts_per_s"] for v in pts if v.get("texts_per_s")]
        p99 = [v["p99_ms"] for v in pts if v.get("p99_ms")]
        rss = [v["rss"] for v in pts if v.get("rss")]
        if not tput:
            continue
        need = TARGETS.get(workload, 1.0)
        met = min(tput) >= need and (workload != "one-task" or not p99 or min(p99) >= 1.0)
        out.append(f"| {workload} | {per_call} | {stack} | {min(tput):.2f} | "
                   f"{min(p99) if p99 else float('nan'):.2f} | "
                   f"{min(rss) if rss else float('nan'):.2f} | ≥ {need:g}× | "
                   f"{'yes' if met else 'NO'} |")
    return [*out, ""]


CEILING_TARGET = {"one-task": 0.9}  # Wacht's texts/s over raw onnxruntime's best, same file


def ceiling_summary(records: list[dict], ceilings: list[dict]) -> list[dict]:
    """Per workload and call size: the ceiling (median over repeats) and Wacht's closed-loop
    texts/s as a fraction of the same repeat's ceiling, worst and best over concurrency >= 4."""
    best = {(c["workload"], c["repeat"]): c["throughput"] for c in ceilings if "throughput" in c}
    by_point: dict[tuple, list[float]] = defaultdict(list)
    for rec in records:
        p = rec.get("point")
        if (not p or rec["stack"] != "wacht" or p["mode"] != "closed" or p["level"] < 4
                or (rec["workload"], rec["repeat"]) not in best):
            continue
        key = (rec["workload"], p["texts_per_call"], p["level"])
        by_point[key].append(p["texts_per_s"] / best[(rec["workload"], rec["repeat"])])
    out = []
    for workload, per_call in sorted({k[:2] for k in by_point}):
        fractions = [statistics.median(v) for k, v in by_point.items()
                     if k[:2] == (workload, per_call)]
        runs = [c for c in ceilings if c["workload"] == workload and "throughput" in c]
        out.append({
            "workload": workload, "texts_per_call": per_call,
            "ceiling_texts_per_s": _median([c["throughput"] for c in runs]),
            "best_batch_sizes": sorted({c["best_batch_size"] for c in runs}),
            "single_p50_ms": _median([c["single_p50_ms"] for c in runs]),
            "wacht_fraction_min": round(min(fractions), 3),
            "wacht_fraction_max": round(max(fractions), 3),
            "target": CEILING_TARGET.get(workload),
        })
    return out


def ceiling_markdown(summary: list[dict], ceilings: list[dict]) -> list[str]:
    out = ["## Against the ceiling (raw onnxruntime, same ONNX file, same server CPUs)", "",
           "The ceiling is bench.ceiling in-process at its best fixed batch size over the same "
           "texts (no server, no queue, no gRPC). Wacht's fraction is taken within each repeat, "
           "median over repeats, worst and best over closed-loop concurrency ≥ 4.", "",
           "| workload | texts/call | ceiling texts/s | best batch | raw single-text p50 ms | "
           "Wacht ÷ ceiling (worst) | (best) | target | met |",
           "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for row in summary:
        target = row["target"]
        met = "—" if target is None else ("yes" if row["wacht_fraction_min"] >= target else "NO")
        out.append(f"| {row['workload']} | {row['texts_per_call']} | "
                   f"{row['ceiling_texts_per_s']} | {row['best_batch_sizes']} | "
                   f"{row['single_p50_ms']} | {row['wacht_fraction_min']:.2f} | "
                   f"{row['wacht_fraction_max']:.2f} | "
                   f"{'—' if target is None else f'≥ {target:g}'} | {met} |")
    out += [f"- ceiling failed ({c['workload']}, repeat {c['repeat']}): {c['error']}"
            for c in ceilings if "error" in c]
    return [*out, ""]


def markdown(rows: list[dict], meta: dict, failures: list[dict],
             ceiling_section: list[str] | None = None) -> str:
    out = ["# Wacht vs peers: side-by-side results", "",
           f"Run: {meta.get('started')} · repeats {meta.get('repeats')} · duration per point "
           f"{meta.get('duration_s')} s · client CPUs {meta.get('client_cpus')} · server CPUs "
           f"{meta.get('server_cpus')} · corpus {meta.get('corpus')}", "",
           "Figures are medians over repeats; `×Wacht` columns are the median of same-repeat "
           "ratios (throughput: higher is better for the stack; latency/RSS: lower is better "
           "for the stack, so > 1 means Wacht is better). Peak RSS is the sum over the server's "
           "process tree (shared pages counted per process); peak PSS counts them once. "
           "Errors are summed over repeats.", ""]
    out += targets(rows)
    out += ceiling_section or []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["workload"], row["texts_per_call"], row["mode"])].append(row)
    for (workload, per_call, mode), group in groups.items():
        level = "concurrency" if mode == "closed" else "offered calls/s"
        out += [f"## {workload} · {per_call} text(s) per call · {mode} loop", "",
                f"| {level} | stack | texts/s | ×Wacht | p50 ms | ×Wacht | p99 ms | ×Wacht | "
                "peak RSS MB | ×Wacht | peak PSS MB | errors |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in group:
            v = row["vs_wacht"]
            errs = ", ".join(f"{k} {n}" for k, n in row["errors"].items() if n) or "0"
            out.append(
                f"| {row['level']:g} | {row['stack']} | {row['texts_per_s']} | "
                f"{v.get('texts_per_s', '')} | {row['p50_ms']} | {v.get('p50_ms', '')} | "
                f"{row['p99_ms']} | {v.get('p99_ms', '')} | {row['rss_mb']} | "
                f"{v.get('rss', '')} | {row['pss_mb']} | {errs} |")
        out.append("")
    if failures:
        out += ["## Stacks that did not run", ""]
        out += [f"- {f['stack']} ({f['workload']}, repeat {f['repeat']}): {f['why']}"
                for f in failures]
        out.append("")
    return "\n".join(out)


def plots(rows: list[dict], records: list[dict], out: Path,
          cdf_concurrency: int = 16) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    closed = [r for r in rows if r["mode"] == "closed"]
    panels = sorted({(r["workload"], r["texts_per_call"]) for r in closed})
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for ax, (workload, per_call) in zip(axes[0], panels, strict=True):
            for stack in sorted({r["stack"] for r in closed}):
                pts = sorted((r["level"], r["texts_per_s"]) for r in closed
                             if r["workload"] == workload and r["texts_per_call"] == per_call
                             and r["stack"] == stack and r["texts_per_s"] is not None)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=stack)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (closed loop)")
            ax.set_ylabel("texts/s")
            ax.set_title(f"{workload}, {per_call} text(s)/call")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / "peers-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    cdf_recs = [r for r in records if "point" in r and r["point"]["mode"] == "closed"
                and r["point"]["level"] == cdf_concurrency]
    panels = sorted({(r["workload"], r["point"]["texts_per_call"]) for r in cdf_recs})
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for ax, (workload, per_call) in zip(axes[0], panels, strict=True):
            for stack in sorted({r["stack"] for r in cdf_recs}):
                lat = sorted(x for r in cdf_recs if r["stack"] == stack
                             and r["workload"] == workload
                             and r["point"]["texts_per_call"] == per_call
                             for x in r.get("latencies_ms", []))
                if lat:
                    ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=stack)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("latency ms (all repeats pooled)")
            ax.set_ylabel("fraction of calls")
            ax.set_title(f"{workload}, {per_call} text(s)/call, concurrency {cdf_concurrency}")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / "peers-latency-cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(raw: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(raw["records"])
    ceilings = raw.get("ceilings", [])
    against_ceiling = ceiling_summary(raw["records"], ceilings)
    summary = {"meta": raw["meta"], "failures": raw["failures"], "checks": raw.get("checks", {}),
               "ceilings": ceilings, "ceiling_summary": against_ceiling, "rows": rows}
    (out / "peers.json").write_text(json.dumps(summary, indent=1))
    section = ceiling_markdown(against_ceiling, ceilings) if ceilings else None
    (out / "peers.md").write_text(markdown(rows, raw["meta"], raw["failures"], section))
    return [out / "peers.json", out / "peers.md", *plots(rows, raw["records"], out)]
