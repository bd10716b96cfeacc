"""ONNX export, parity check, graph fusion and dynamic quantisation (needs the `train` extra)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wacht.models.multitask import ONNX_INPUTS, MultiTaskModel

log = logging.getLogger("wacht.models.export")

OPSET = 17


def export_onnx(model: MultiTaskModel, path: Path, opset: int = OPSET) -> Path:
    """One graph: int64 inputs [batch, sequence], one logits output per head."""
    import torch

    model = model.eval().to("cpu")
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 2023, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    outputs = [h.output for h in model.head_specs]
    axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    axes.update({name: {0: "batch"} for name in outputs})
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask, types), str(path), input_names=list(ONNX_INPUTS),
            output_names=outputs, dynamic_axes=axes, opset_version=opset, dynamo=False,
            do_constant_folding=True,
        )
    return path


def session(path: Path, threads: int = 2):  # noqa: ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def padded(windows: list[list[int]]) -> dict[str, np.ndarray]:
    longest = max(len(w) for w in windows)
    ids = np.zeros((len(windows), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = w
        mask[i, : len(w)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def torch_logits(model: MultiTaskModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = model.eval()(*(torch.from_numpy(feeds[n]) for n in ONNX_INPUTS))
    return [o.numpy() for o in out]


def parity(model: MultiTaskModel, onnx_path: Path, windows: list[list[int]],
           batch_size: int = 16) -> float:
    """Max |torch logit - ONNX logit| over all heads, padded batches of similar length."""
    sess = session(onnx_path)
    names = [h.output for h in model.head_specs]
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    worst = 0.0
    for start in range(0, len(order), batch_size):
        feeds = padded([windows[i] for i in order[start : start + batch_size]])
        onnx_out = sess.run(names, feeds)
        for a, b in zip(torch_logits(model, feeds), onnx_out, strict=True):
            worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


@dataclass(frozen=True)
class QuantScheme:
    name: str
    fused: bool
    weight_type: str  # QInt8 | QUInt8
    per_channel: bool
    reduce_range: bool
    # MatMul name fragment left in fp32 ("/output/dense": the attention and FFN output
    # projections, whose inputs have the widest activation ranges)
    keep_fp32: str = ""


def _scheme_name(fused: bool, weight_type: str, per_channel: bool, reduce_range: bool) -> str:
    parts = ["fused"] if fused else []
    parts.append(weight_type.lower())
    parts += ["pc"] if per_channel else []
    parts += ["rr"] if reduce_range else []
    return "-".join(parts)


SCHEMES = [
    QuantScheme(_scheme_name(fused, wt, pc, rr), fused, wt, pc, rr)
    for fused in (False, True)
    for wt in ("QInt8", "QUInt8")
    for pc in (False, True)
    for rr in (False, True)
] + [QuantScheme("qint8-pc-fp32-out-proj", False, "QInt8", True, False, "/output/dense")]


def fuse(fp32: Path, out: Path, hidden: int = 384, heads: int = 12) -> Path:
    """onnxruntime's transformer optimiser (attention, LayerNorm, GELU fusion), fp32."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=heads,
                                         hidden_size=hidden, opt_level=1)
    optimized.save_model_to_file(str(out))
    return out


def to_fp16(fp32: Path, out: Path, hidden: int = 384, heads: int = 12) -> Path:
    """Fused fp16 graph with fp32 inputs/outputs, for GPUs."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=heads,
                                         hidden_size=hidden, opt_level=1)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(out))
    return out


def quantize(fp32: Path, out: Path, scheme: QuantScheme, work: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = fp32
    if scheme.fused:
        source = work / "fused-fp32.onnx"
        if not source.is_file():
            fuse(fp32, source)
    exclude = []
    if scheme.keep_fp32:
        graph = onnx.load(str(source), load_external_data=False).graph
        exclude = [n.name for n in graph.node
                   if n.op_type in ("MatMul", "Gemm") and scheme.keep_fp32 in n.name]
    quantize_dynamic(str(source), str(out), per_channel=scheme.per_channel,
                     nodes_to_exclude=exclude,
                     reduce_range=scheme.reduce_range,
                     weight_type=getattr(QuantType, scheme.weight_type),
                     # fused contrib ops defeat shape inference; their outputs are float
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def run_logits(onnx_path: Path, windows: list[list[int]], names: list[str],
               batch_size: int = 32, threads: int = 2) -> list[np.ndarray]:
    sess = session(onnx_path, threads)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    out = [np.zeros((len(windows), 0), dtype=np.float32) for _ in names]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(order), batch_size):
        feeds = padded([windows[i] for i in order[start : start + batch_size]])
        for k, arr in enumerate(sess.run(names, feeds)):
            parts[k].append(arr)
    inverse = np.argsort(order)
    out = [np.concatenate(p)[inverse] for p in parts]
    return out


def throughput(onnx_path: Path, windows: list[list[int]], batch_size: int, threads: int = 2,
               seconds: float = 3.0) -> float:
    """Texts per second, batches in the given (real-length) order, after one warm-up batch."""
    import time

    sess = session(onnx_path, threads)
    batches = [padded(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
    sess.run(None, batches[0])
    done = 0
    started = time.perf_counter()
    while True:
        for feeds in batches:
            sess.run(None, feeds)
            done += feeds["input_ids"].shape[0]
            if time.perf_counter() - started > seconds:
                return done / (time.perf_counter() - started)


BENCH_BATCHES = (1, 4, 32)


def decisions(logits: list[np.ndarray], cutoffs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Per output: argmax (cutoff None) or 0/1 per label at logit cutoffs."""
    return [a.argmax(1) if c is None else (a >= c).astype(int)
            for a, c in zip(logits, cutoffs, strict=True)]


def compare_schemes(fp32: Path, work: Path, windows: list[list[int]], names: list[str],
                    cutoffs: list[np.ndarray | None], speed_windows: list[list[int]],
                    schemes: list[QuantScheme] | None = None, seconds: float = 2.0,
                    rounds: int = 2) -> list[dict]:
    """Every scheme's label agreement with fp32 (share of identical label decisions per head)
    and texts/s at batch 1, 4 and 32 with 2 threads (best of `rounds`, rounds interleaved
    over schemes so background load hits all alike). fp32 rows included."""
    base = run_logits(fp32, windows, names)
    base_labels = decisions(base, cutoffs)
    candidates: list[tuple[str, Path, QuantScheme | None]] = [("fp32", fp32, None)]
    fused = work / "fused-fp32.onnx"
    fuse(fp32, fused)
    candidates.append(("fused-fp32", fused, None))
    for scheme in schemes or SCHEMES:
        path = work / f"{scheme.name}.onnx"
        quantize(fp32, path, scheme, work)
        candidates.append((scheme.name, path, scheme))
    rows = []
    for name, path, scheme in candidates:
        logits = run_logits(path, windows, names)
        agree = []
        for a, b in zip(base_labels, decisions(logits, cutoffs), strict=True):
            agree.append(float(np.mean(a == b)))  # per label decision
        rows.append({
            "scheme": name,
            **({k: v for k, v in asdict(scheme).items() if k != "name"} if scheme else {}),
            "size_mb": round(path.stat().st_size / 1e6, 1),
            "max_abs_logit_diff": round(float(max(np.max(np.abs(a - b))
                                                  for a, b in zip(base, logits, strict=True))), 4),
            "agreement": [round(a, 4) for a in agree],
            **{f"texts_per_s_b{b}": 0.0 for b in BENCH_BATCHES},
        })
    for _ in range(rounds):
        for row, (_, path, _) in zip(rows, candidates, strict=True):
            for b in BENCH_BATCHES:
                texts = speed_windows[:200] if b == 1 else speed_windows
                speed = throughput(path, texts, b, seconds=seconds)
                row[f"texts_per_s_b{b}"] = round(max(row[f"texts_per_s_b{b}"], speed), 1)
    fp32_row = rows[0]
    for row in rows:
        ratios = [row[f"texts_per_s_b{b}"] / fp32_row[f"texts_per_s_b{b}"] for b in BENCH_BATCHES]
        row["speed_vs_fp32"] = round(float(np.exp(np.mean(np.log(ratios)))), 3)
        log.info("scheme %s", json.dumps(row))
    return rows


MAX_MODEL_MB = 29.0  # the committed directory must stay under 30 MB with its tokenizer


def rank_schemes(rows: list[dict], min_agreement: float = 0.99) -> list[dict]:
    """int8 schemes small enough to commit: those with >= 99% label agreement on every head,
    fastest first (geometric mean of the batch 1/4/32 speed-ups over fp32); then the rest,
    most agreeing first."""
    small = [r for r in rows if r["scheme"] not in ("fp32", "fused-fp32")
             and r["size_mb"] <= MAX_MODEL_MB]
    ok = [r for r in small if min(r["agreement"]) >= min_agreement]
    rest = [r for r in small if min(r["agreement"]) < min_agreement]
    return (sorted(ok, key=lambda r: -r["speed_vs_fp32"])
            + sorted(rest, key=lambda r: -min(r["agreement"])))


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
