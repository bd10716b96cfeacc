"""Multi-task fine-tuning of all-MiniLM-L6-v2 (needs the `train` extra).

    python -m wacht.models.train --out /tmp/wacht-train [--epochs 1] [--device cpu|cuda]

Each example carries targets only for the outputs its source labels (masks); SST-2 trains
sentiment as negative-vs-positive over two of the three logits, TweetEval sentiment supplies
the neutral class. Writes a checkpoint (see models.multitask) with thresholds picked on the
validation sets.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wacht.models import TOXICITY_LABELS
from wacht.models.data import (
    DEFAULT_DATA_DIR,
    EvalSet,
    Example,
    epoch_sample,
    training_sources,
    validation_sets,
)
from wacht.models.multitask import MultiTaskModel, base_model_dir, from_base, save_checkpoint
from wacht.models.thresholds import best_threshold, macro_f1

log = logging.getLogger("wacht.models.train")

DEFAULT_CAPS = {"sst2": 25000, "davidson": 8000, "cad": 8000, "hatexplain": 12000}


@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA_DIR)
    out: str = "/tmp/wacht-train"
    seed: int = 13
    epochs: float = 1.6
    batch_size: int = 32
    max_tokens: int = 128
    lr: float = 5e-5
    head_lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.06
    device: str = "cpu"
    # One thread: on a shared 2-core box a 2-thread step stalls whenever another process
    # holds a core (measured 0.28 vs 0.91 steps/s under load).
    threads: int = 1
    max_minutes: float = 45.0
    max_steps: int = 0
    save_minutes: float = 10.0
    freeze_word_embeddings: bool = True
    init: str = ""  # continue from this checkpoint instead of the base weights
    caps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(max_tokens: int):  # noqa: ANN201
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


@dataclass
class Encoded:
    ids: list[int]
    example: Example


def encode(tok, examples: list[Example]) -> list[Encoded]:  # noqa: ANN001
    out = tok.encode_batch([e.text for e in examples])
    return [Encoded(o.ids, e) for o, e in zip(out, examples, strict=True)]


def make_batches(rows: list[Encoded], batch_size: int, rng: random.Random) -> list[list[Encoded]]:
    """Length buckets: sort chunks of 50 batches by length, cut, shuffle the batches."""
    rows = rows[:]
    rng.shuffle(rows)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(rows), chunk):
        part = sorted(rows[start : start + chunk], key=lambda r: len(r.ids))
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def collate(batch: list[Encoded], device: str) -> dict[str, torch.Tensor]:
    width = max(len(r.ids) for r in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
    sentiment = torch.tensor([r.example.sentiment for r in batch])
    binary = torch.tensor([r.example.sentiment_binary for r in batch])
    tox = torch.tensor([[0.0 if v is None else v for v in r.example.toxicity] for r in batch])
    tox_mask = torch.tensor([[v is not None for v in r.example.toxicity] for r in batch])
    tensors = {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
        "sentiment": sentiment, "binary": binary, "tox": tox, "tox_mask": tox_mask.float(),
    }
    return {k: v.to(device) for k, v in tensors.items()}


def multitask_loss(sent: torch.Tensor, tox: torch.Tensor, b: dict[str, torch.Tensor]
                   ) -> torch.Tensor:
    labelled = b["sentiment"] >= 0
    three = labelled & ~b["binary"]
    two = labelled & b["binary"]
    loss = sent.new_zeros(())
    n = int(labelled.sum())
    if n:
        total = sent.new_zeros(())
        if three.any():
            total = total + F.cross_entropy(sent[three], b["sentiment"][three], reduction="sum")
        if two.any():
            # negative vs positive only: the neutral logit gets no gradient from SST-2
            logits = sent[two][:, [0, 2]]
            total = total + F.cross_entropy(logits, (b["sentiment"][two] == 2).long(),
                                            reduction="sum")
        loss = loss + total / n
    weight = b["tox_mask"]
    if weight.sum() > 0:
        bce = F.binary_cross_entropy_with_logits(tox, b["tox"], reduction="none")
        loss = loss + (bce * weight).sum() / weight.sum()
    return loss


@torch.no_grad()
def predict_scores(model: torch.nn.Module, tok, texts: list[str], device: str,  # noqa: ANN001
                   batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(softmax sentiment, sigmoid toxicity) per text, in input order."""
    model.eval()
    encoded = [Encoded(o.ids, Example("", "")) for o in tok.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    sent = np.zeros((len(texts), 3), dtype=np.float32)
    tox = np.zeros((len(texts), len(TOXICITY_LABELS)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = collate([encoded[i] for i in idx], device)
        s, t = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        sent[idx] = torch.softmax(s, -1).cpu().numpy()
        tox[idx] = torch.sigmoid(t).cpu().numpy()
    return sent, tox


# Val sets per label where not every set that labels it: "offensive" follows the OLID
# definition (TweetEval offensive val); Davidson's "offensive" has an 83% base rate and a
# profanity-centred definition that pulls the threshold up.
THRESHOLD_SETS = {"offensive": ("tweeteval_offensive_val",)}


def choose_thresholds(model: torch.nn.Module, tok, data: Path, device: str,  # noqa: ANN001
                      sets: list[EvalSet] | None = None,
                      chosen_on: dict[str, tuple[str, ...]] = THRESHOLD_SETS,
                      ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per toxicity label: the threshold maximising macro-F1 averaged over its val sets
    (`chosen_on` narrows a label to some of them)."""
    sets = validation_sets(data) if sets is None else sets
    scores = {s.name: predict_scores(model, tok, s.texts, device)[1] for s in sets}
    thresholds: dict[str, float] = {}
    report: dict[str, dict[str, float]] = {}
    for j, label in enumerate(TOXICITY_LABELS):
        chosen = [s for s in sets if isinstance(s.gold, dict) and label in s.gold
                  and s.name in chosen_on.get(label, (s.name,))]
        pairs = [(np.array(s.gold[label]), scores[s.name][:, j]) for s in chosen]
        t, score = best_threshold(pairs)
        thresholds[label] = t
        report[label] = {"threshold": t, "val_macro_f1": round(score, 4),
                         "chosen_on": [s.name for s in chosen]}
        for s in sets:
            if isinstance(s.gold, dict) and label in s.gold:
                g = np.array(s.gold[label])
                keep = g >= 0
                report[label][s.name] = round(
                    macro_f1(g[keep], (scores[s.name][keep, j] >= t).astype(int), 2), 4)
    return thresholds, report


class Schedule:
    """AdamW over the trainable parameters (heads at `head_lr`, no weight decay on heads,
    biases and norms), linear warmup, then linear decay to 0 at the end of the planned steps
    or of the time budget, whichever comes first (a slow, shared CPU still gets a full
    decay)."""

    def __init__(self, model: torch.nn.Module, lr: float, head_lr: float, weight_decay: float,
                 warmup_share: float, total_steps: int, budget_s: float) -> None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        heads = [p for n, p in trainable if n.startswith("heads.")]
        decay = [p for n, p in trainable if not n.startswith("heads.") and p.ndim >= 2]
        no_decay = [p for n, p in trainable if not n.startswith("heads.") and p.ndim < 2]
        self.optimizer = torch.optim.AdamW([
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            {"params": heads, "lr": head_lr, "weight_decay": 0.0},
        ])
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.total = max(1, total_steps)
        self.warmup = max(1, int(warmup_share * self.total))
        self.budget_s = budget_s

    def factor(self, step: int, elapsed: float) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = max(step / self.total, elapsed / self.budget_s)
        return max(0.0, (1.0 - progress) / max(1e-9, 1.0 - self.warmup / self.total))

    def set_lr(self, step: int, elapsed: float) -> float:
        factor = self.factor(step, elapsed)
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * factor
        return factor


@dataclass
class FitResult:
    steps: int
    planned_steps: int
    minutes: float
    stopped_by_time: bool
    examples_per_epoch: int


def fit(model: torch.nn.Module, tok, sources: dict[str, list[Example]],  # noqa: ANN001
        cfg: TrainConfig) -> FitResult:
    """The training loop every recipe shares: capped epochs of length-bucketed batches, the
    masked multi-task loss, AdamW (heads at `head_lr`), warmup then linear decay to 0 by the
    end of the planned steps or of the time budget, periodic checkpoints. Parameters with
    requires_grad False stay frozen. `model(ids, mask, token_type_ids)` -> (sentiment,
    toxicity) logits."""
    rng = random.Random(cfg.seed)
    encoded = {name: encode(tok, rows) for name, rows in sources.items()}
    by_example = {id(e.example): e for rows in encoded.values() for e in rows}
    per_epoch = sum(min(len(rows), cfg.caps.get(name, len(rows))) for name, rows in
                    sources.items())
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    log.info("examples/epoch=%d steps/epoch=%d total_steps=%d", per_epoch, steps_per_epoch,
             total_steps)
    model = model.to(cfg.device)
    budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    schedule = Schedule(model, cfg.lr, cfg.head_lr, cfg.weight_decay, cfg.warmup, total_steps,
                        budget)

    out = Path(cfg.out)
    started = time.monotonic()
    last_save = started
    step = 0
    stopped_by_time = False
    epoch = 0
    running = 0.0
    while step < total_steps and not stopped_by_time:
        rows = [by_example[id(e)] for e in epoch_sample(sources, cfg.caps, rng)]
        for batch in make_batches(rows, cfg.batch_size, rng):
            elapsed = time.monotonic() - started
            if step >= total_steps:
                break
            if elapsed >= budget:
                log.warning("time budget reached at step %d of %d", step, total_steps)
                stopped_by_time = True
                break
            factor = schedule.set_lr(step, elapsed)
            model.train()
            b = collate(batch, cfg.device)
            sent, tox = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            loss = multitask_loss(sent, tox, b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            schedule.optimizer.step()
            schedule.optimizer.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()
            running = 0.98 * running + 0.02 * value if step > 1 else value
            if step % 50 == 0 or step == 1:
                elapsed = time.monotonic() - started
                log.info("epoch %d step %d/%d loss %.4f lr x%.3f %.2f steps/s %.1f min", epoch,
                         step, total_steps, running, factor, step / elapsed, elapsed / 60)
            if time.monotonic() - last_save > cfg.save_minutes * 60 and \
                    isinstance(model, MultiTaskModel):
                save_checkpoint(model, out / "checkpoint", {"step": step, "partial": True})
                last_save = time.monotonic()
        epoch += 1
    model.eval()
    return FitResult(step, total_steps, round((time.monotonic() - started) / 60, 1),
                     stopped_by_time, per_epoch)


def train(cfg: TrainConfig) -> Path:
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data)
    tok = load_tokenizer(cfg.max_tokens)
    sources = training_sources(data)
    model = from_base(seed=cfg.seed)
    if cfg.init:
        from wacht.models.multitask import load_checkpoint

        model.load_state_dict(load_checkpoint(Path(cfg.init))[0].state_dict())
    if cfg.freeze_word_embeddings:
        # The dense gradient + AdamW update of the 30522x384 table costs ~3/4 of a CPU step.
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    result = fit(model, tok, sources, cfg)
    thresholds, threshold_report = choose_thresholds(model, tok, data, cfg.device)
    for head in model.head_specs:
        if head.activation == "sigmoid":
            head.thresholds = {k: thresholds.get(k, 0.5) for k in head.labels}
    model.to("cpu")
    meta = {
        "train_config": asdict(cfg),
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "stopped_early": result.stopped_by_time,
        "train_minutes": result.minutes,
        "train_sizes": {name: len(rows) for name, rows in sources.items()},
        "examples_per_epoch": result.examples_per_epoch,
        "thresholds": threshold_report,
        "torch": torch.__version__,
    }
    if cfg.init:
        previous = json.loads((Path(cfg.init) / "tasks.json").read_text(encoding="utf-8"))
        meta["init_from"] = {k: v for k, v in previous.items() if k != "heads"}
    save_checkpoint(model, out / "checkpoint", meta)
    log.info("done: %s", json.dumps({k: meta[k] for k in ("steps", "train_minutes")}))
    return out / "checkpoint"


# Second phase of the default recipe: a short pass that re-weights towards TweetEval/OLID
# offensive (uncapped) with a lower learning rate, starting from the first phase.
PHASE2_CAPS = {"sst2": 5000, "tweeteval_hate": 2000, "davidson": 2000, "hatexplain": 2000,
               "cad": 1000, "toxigen": 1000}


def second_phase(first: TrainConfig, checkpoint: Path, out: Path) -> TrainConfig:
    return TrainConfig(data=first.data, out=str(out), seed=first.seed, epochs=1.0,
                       batch_size=first.batch_size, max_tokens=first.max_tokens, lr=3e-5,
                       head_lr=3e-4, device=first.device, threads=first.threads,
                       max_minutes=11.0 if first.max_minutes > 0 else 0.0,
                       caps=dict(PHASE2_CAPS),
                       freeze_word_embeddings=first.freeze_word_embeddings,
                       init=str(checkpoint))


def rethreshold(checkpoint: Path, data: Path, threads: int = 2) -> dict[str, float]:
    """Re-run the threshold choice on a finished checkpoint (rewrites its tasks.json)."""
    from wacht.models.multitask import load_checkpoint

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(checkpoint)
    thresholds, report = choose_thresholds(model, load_tokenizer(128), data, "cpu")
    for head in meta["heads"]:
        if head["activation"] == "sigmoid":
            head["thresholds"] = {k: thresholds.get(k, 0.5) for k in head["labels"]}
    meta["thresholds"] = report
    path = checkpoint / "tasks.json"
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return thresholds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wacht.models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    p.add_argument("--data", default=d.data)
    p.add_argument("--out", default=d.out,
                   help="work directory; the checkpoint goes to OUT/checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--head-lr", type=float, default=d.head_lr)
    p.add_argument("--device", default=d.device, choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--max-minutes", type=float, default=d.max_minutes,
                   help="time budget; the LR decays to 0 by then (0: steps only, reproducible)")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--train-word-embeddings", action="store_true",
                   help="also fine-tune the word-embedding table (4x slower on CPU)")
    p.add_argument("--init", default="", help="start from this checkpoint (continued training)")
    p.add_argument("--cap", action="append", default=[], metavar="SOURCE=N",
                   help=f"examples per epoch from SOURCE (default caps: {DEFAULT_CAPS})")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    caps = dict(DEFAULT_CAPS)
    for item in args.cap:
        name, _, n = item.partition("=")
        caps[name] = int(n)
    return TrainConfig(data=args.data, out=args.out, seed=args.seed, epochs=args.epochs,
                       batch_size=args.batch_size, max_tokens=args.max_tokens, lr=args.lr,
                       head_lr=args.head_lr, device=args.device, threads=args.threads,
                       max_minutes=args.max_minutes, max_steps=args.max_steps, caps=caps,
                       freeze_word_embeddings=not args.train_word_embeddings, init=args.init)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(config_from_args(parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
