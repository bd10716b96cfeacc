"""Build the multilingual model directory on USE Multilingual v3 (needs the `train` extra).

    make model-multilingual
    = python -m wacht.models.multilingual --out models/use-multilingual-moderation

Steps: tokenizer.json from the package's sp.model -> joint fine-tune (English sets + our
GermEval 2018 train split; word-embedding table frozen) -> thresholds on the val splits ->
ONNX export of every compression variant -> evaluation of each through the server's own
engine -> the chosen variant as a model directory (manifest, CARD, metrics, SHA256SUMS).
Intermediate files go to --work (default /tmp/wacht-multilingual).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wacht.models.data import (
    DEFAULT_DATA_DIR,
    germeval_set,
    germeval_sources,
    training_sources,
    validation_sets,
)
from wacht.models.multitask import HeadSpec, default_heads
from wacht.models.train import TrainConfig, choose_thresholds, fit, seed_everything
from wacht.models.use_encoder import (
    EMB_DIM,
    PACKAGE,
    VOCAB_ROWS,
    MultilingualModel,
    build_tokenizer_json,
    from_package,
)

log = logging.getLogger("wacht.models.multilingual")

NAME = "use-multilingual-moderation"
VERSION = "1.0.0"
MAX_LENGTH = 128
WINDOW_STRIDE = 96
# ISO 639-1 codes of USE Multilingual v3's 16 languages (zh-tw is written zh by the detector).
USE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th",
                 "tr", "zh")
CAPS = {"sst2": 12000, "davidson": 5000, "cad": 5000, "hatexplain": 8000,
        "tweeteval_hate": 5000, "toxigen": 3000}
GERMAN_REPEATS = 3  # GermEval train is small (3.7k): seen three times per epoch
THRESHOLDS_CHOSEN_ON = {"offensive": ("tweeteval_offensive_val", "germeval_val")}
ONNX_INPUTS = ("input_ids", "attention_mask")
OPSET = 17
# Languages whose words (wordfreq's frequency lists) choose the embedding rows that are kept.
PRUNE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru",
                   "tr", "zh")


def load_tokenizer(work: Path, max_tokens: int = MAX_LENGTH):  # noqa: ANN201
    from tokenizers import Tokenizer

    path = work / "tokenizer.json"
    if not path.is_file():
        build_tokenizer_json(path)
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


def threshold_sets(data: Path) -> list:
    return [*validation_sets(data), germeval_set(data, "val")]


def train(cfg: TrainConfig, work: Path) -> tuple[MultilingualModel, dict]:
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = Path(cfg.data)
    tok = load_tokenizer(work, cfg.max_tokens)
    sources = training_sources(data)
    german = germeval_sources(data)["germeval"]
    sources["germeval"] = german * GERMAN_REPEATS
    model = from_package(default_heads(), seed=cfg.seed)
    # The 128k x 512 table is 94% of the parameters; a dense AdamW update of it would cost
    # most of every CPU step. Everything after the lookup is trained.
    model.encoder.embedding.weight.requires_grad_(False)
    result = fit(model, tok, sources, cfg)
    thresholds, report = choose_thresholds(model, tok, data, cfg.device, threshold_sets(data),
                                           THRESHOLDS_CHOSEN_ON)
    for head in model.head_specs:
        if head.activation == "sigmoid":
            head.thresholds = {k: thresholds.get(k, 0.5) for k in head.labels}
    model.to("cpu").eval()
    meta = {
        "train_config": asdict(cfg), "steps": result.steps, "planned_steps": result.planned_steps,
        "stopped_early": result.stopped_by_time, "train_minutes": result.minutes,
        "train_sizes": {name: len(rows) for name, rows in sources.items() if name != "germeval"}
        | {"germeval": len(german)},
        "german_repeats": GERMAN_REPEATS, "examples_per_epoch": result.examples_per_epoch,
        "thresholds": report, "torch": torch.__version__,
        "heads": [asdict(h) for h in model.head_specs],
    }
    work.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), work / "checkpoint.pt")
    (work / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return model, meta


def load_trained(work: Path) -> tuple[MultilingualModel, dict]:
    meta = json.loads((work / "checkpoint.json").read_text(encoding="utf-8"))
    model = from_package([HeadSpec(**h) for h in meta["heads"]])
    model.load_state_dict(torch.load(work / "checkpoint.pt", weights_only=True))
    return model.eval(), meta


# ---------------------------------------------------------------- compression

def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: w ~ q * scale."""
    scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class CompressedEmbedding(nn.Module):
    """Rows kept (int8 with per-row scales, or float32), a piece-id -> row remap; every
    dropped piece maps to one fallback row (the mean of the dropped rows)."""

    def __init__(self, table: np.ndarray, keep: np.ndarray | None, int8: bool) -> None:
        super().__init__()
        if keep is None:
            rows, remap = table, np.arange(VOCAB_ROWS, dtype=np.int32)
        else:
            dropped = np.ones(VOCAB_ROWS, dtype=bool)
            dropped[keep] = False
            fallback = table[dropped].mean(axis=0, keepdims=True) if dropped.any() else \
                np.zeros((1, EMB_DIM), np.float32)
            rows = np.concatenate([table[keep], fallback]).astype(np.float32)
            remap = np.full(VOCAB_ROWS, len(keep), dtype=np.int32)
            remap[keep] = np.arange(len(keep), dtype=np.int32)
        self.register_buffer("remap", torch.from_numpy(remap))
        self.int8 = int8
        if int8:
            q, scale = quantize_rows(rows)
            self.register_buffer("rows", torch.from_numpy(q))
            self.register_buffer("row_scale", torch.from_numpy(scale))
        else:
            self.register_buffer("rows", torch.from_numpy(rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        index = self.remap[input_ids].to(torch.int64)
        rows = self.rows[index]
        if self.int8:
            return rows.to(torch.float32) * self.row_scale[index]
        return rows


class Int8Linear(nn.Module):
    """Weights stored int8 per output channel; ONNX Runtime folds the dequantisation into a
    float32 constant at load, so compute (and every score) stays float32 and batch-invariant."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_rows(layer.weight.detach().numpy())
        self.register_buffer("q", torch.from_numpy(q))
        self.register_buffer("scale", torch.from_numpy(scale))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.q.to(torch.float32) * self.scale
        return nn.functional.linear(x, w, self.bias)


class ExportModel(nn.Module):
    """The trained model with its embedding lookup replaced by a compressed one."""

    def __init__(self, model: MultilingualModel, embedding: nn.Module) -> None:
        super().__init__()
        model.encoder.embedding = embedding
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        return self.model(input_ids, attention_mask)


def int8_dense(model: MultilingualModel) -> MultilingualModel:
    """Every linear layer of the encoder as Int8Linear (the heads stay float32)."""
    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
            else:
                swap(child)
    swap(model.encoder)
    return model


def export_onnx(model: nn.Module, path: Path, outputs: list[str], fold: bool = True) -> Path:
    """`fold=False` keeps int8 weights int8 in the file (the exporter's constant folding would
    store their float32 dequantisation); ONNX Runtime folds them when it loads the graph."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[1, 200, 300, 2], [1, 400, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"}}
    axes |= {name: {0: "batch"} for name in outputs}
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(path), input_names=list(ONNX_INPUTS),
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=fold, dynamo=False)
    return path


def pseudo_sentences(per_language: int, seed: int, languages: tuple[str, ...] = PRUNE_LANGUAGES
                     ) -> list[str]:
    """Sequences of 1-25 words drawn from each language's 5,000 most frequent (wordfreq):
    text in 14 scripts and languages for parity checks of the port, not for meaning."""
    import wordfreq

    rng = random.Random(seed)
    out = []
    for lang in languages:
        words = wordfreq.top_n_list(lang, 5000)
        sep = "" if lang in ("ja", "zh") else " "
        out += [sep.join(rng.choice(words) for _ in range(rng.randint(1, 25)))
                for _ in range(per_language)]
    return out


def sample_pieces(tok, data: Path, per_language: int) -> np.ndarray:  # noqa: ANN001
    """Piece ids seen in the training texts and in the `per_language` most frequent words
    (wordfreq) of each language in PRUNE_LANGUAGES, plus the special pieces."""
    import wordfreq

    texts = [e.text for rows in training_sources(data).values() for e in rows]
    texts += [e.text for e in germeval_sources(data)["germeval"]]
    for lang in PRUNE_LANGUAGES:
        words = wordfreq.top_n_list(lang, per_language)
        texts += words
        texts += [w.capitalize() for w in words if w[:1].isalpha()]
    seen = {0, 1, 2}
    for enc in tok.encode_batch(texts):
        seen.update(enc.ids)
    return np.array(sorted(seen), dtype=np.int64)


# ---------------------------------------------------------------- directory

def manifest(meta: dict, precision: str, data: Path, rebuild: str, compression: dict) -> dict:
    from wacht.models.card import DATASETS
    from wacht.models.package import manifest_dict

    heads_ = [{**h, "output": f"{h['name']}_logits"} for h in meta["heads"]]
    sizes = meta["train_sizes"]
    datasets = [{"name": n, "source": d["source"], "license": d["license"], "split": d["train"],
                 "size": sizes.get(n, 0)} for n, d in DATASETS.items() if n in sizes]
    datasets.append({
        "name": "germeval2018",
        "source": "GermEval 2018 (Wiegand, Siegel & Ruppenhofer 2018), "
                  "github.com/uds-lsv/GermEval-2018-Data @9877472",
        "license": "CC BY 4.0",
        "split": "germeval2018.training.txt, our hash split: 75% train (this), 10% val "
                 "(thresholds), 15% dev (reported)",
        "size": sizes.get("germeval", 0)})
    provenance = {
        "base_model": "Google Universal Sentence Encoder Multilingual v3 (CNN)",
        "base_model_license": "Apache-2.0", "base_model_package": PACKAGE,
        "license": "Apache-2.0", "rebuild_command": rebuild, "datasets": datasets,
        "training": {"steps": meta["steps"], "minutes": meta["train_minutes"],
                     "seed": meta["train_config"]["seed"]},
        "compression": compression,
    }
    return manifest_dict(NAME, VERSION, precision, heads_, provenance, MAX_LENGTH,
                         WINDOW_STRIDE, inputs=ONNX_INPUTS, languages=USE_LANGUAGES)


def write_candidate(out: Path, onnx_file: Path, work: Path, meta: dict, precision: str,
                    data: Path, rebuild: str, compression: dict) -> Path:
    import shutil

    from wacht.models.package import clean_directory, write_manifest
    from wacht.service.runtime.model_dir import write_sha256sums

    clean_directory(out)
    shutil.copyfile(onnx_file, out / "model.onnx")
    shutil.copyfile(work / "tokenizer.json", out / "tokenizer.json")  # compact, no padding
    write_manifest(out / "manifest.yaml", manifest(meta, precision, data, rebuild, compression))
    write_sha256sums(out)
    return out


def mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def build_variants(model: MultilingualModel, meta: dict, tok, data: Path, work: Path,  # noqa: ANN001
                   rebuild: str, per_language: int) -> list[dict]:
    """Export and evaluate each compression variant; returns one row per variant."""
    import copy

    from wacht.models.evaluate import evaluate, headline

    table = model.encoder.embedding.weight.detach().numpy()
    keep = sample_pieces(tok, data, per_language)
    log.info("pruning keeps %d of %d pieces", len(keep), VOCAB_ROWS)
    outputs = [f"{h.name}_logits" for h in model.head_specs]
    variants = {
        "fp32": (None, False, False),
        "int8-rows": (None, True, False),
        "pruned-fp32": (keep, False, False),
        "pruned-int8-rows": (keep, True, False),
        "pruned-int8-rows+int8-dense": (keep, True, True),
    }
    rows = []
    german = [germeval_set(data, "dev")]
    for name, (kept, int8_rows, dense8) in variants.items():
        m = copy.deepcopy(model)
        if dense8:
            int8_dense(m)
        export = ExportModel(m, CompressedEmbedding(table, kept, int8_rows)).eval()
        onnx_file = export_onnx(export, work / name / "model.onnx", outputs, fold=not dense8)
        compression = {"variant": name, "embedding_rows": int(len(kept) if kept is not None
                                                              else VOCAB_ROWS),
                       "embedding": "int8 per row" if int8_rows else "float32",
                       "dense": "int8 per output channel" if dense8 else "float32"}
        precision = "int8-weights" if (int8_rows or dense8) else "fp32"
        cand = write_candidate(work / name / "dir", onnx_file, work, meta, precision, data,
                               rebuild, compression)
        started = time.perf_counter()
        metrics, decided = evaluate(cand, data, extra_sets=german)
        rows.append({"variant": name, "model_mb": mb(onnx_file),
                     "dir_mb": round(sum(mb(p) for p in cand.iterdir()), 2),
                     "compression": compression, "metrics": metrics, "decisions": decided,
                     "headline": headline(metrics), "eval_s": round(time.perf_counter() - started)})
        log.info("%s: %.1f MB, germeval_dev macro-F1 %s", name, rows[-1]["model_mb"],
                 metrics["datasets"]["germeval_dev"]["macro_f1"])
    return rows


def choose(rows: list[dict], limit_mb: float = 35.0, points: float = 0.01) -> dict:
    """The smallest variant under `limit_mb` whose headline metrics are all within `points`
    of float32's; else the most accurate one under the limit."""
    ref = next(r for r in rows if r["variant"] == "fp32")["headline"]
    fits = [r for r in rows if r["dir_mb"] < limit_mb]
    if not fits:
        raise SystemExit(f"no variant fits in {limit_mb} MB: {[r['dir_mb'] for r in rows]}")
    good = [r for r in fits if all(r["headline"].get(k, 0) >= v - points
                                   for k, v in ref.items() if "macro_f1" in k)]
    pool = good or fits
    return min(pool, key=lambda r: r["dir_mb"]) if good else max(
        pool, key=lambda r: r["metrics"]["datasets"]["germeval_dev"]["macro_f1"])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m wacht.models.multilingual", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=f"models/{NAME}")
    p.add_argument("--work", default="/tmp/wacht-multilingual")
    p.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--max-minutes", type=float, default=25.0,
                   help="training time budget; the LR decays to 0 by then (0: steps only)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-language", type=int, default=700,
                   help="most frequent words per language whose pieces the pruned table keeps")
    p.add_argument("--skip-training", action="store_true",
                   help="reuse WORK/checkpoint.pt from an earlier run")
    args = p.parse_args(argv)
    work, data, out = Path(args.work), Path(args.data), Path(args.out)
    recipe = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--skip-training"]
    rebuild = "make model-multilingual   # = " + shlex.join(
        [".venv-train/bin/python", "-m", "wacht.models.multilingual", *recipe])
    cfg = TrainConfig(data=str(data), out=str(work), seed=args.seed, epochs=args.epochs,
                      batch_size=32, max_tokens=MAX_LENGTH, lr=args.lr, head_lr=args.head_lr,
                      threads=args.threads, max_minutes=args.max_minutes, caps=dict(CAPS),
                      warmup=0.04)
    if args.skip_training:
        model, meta = load_trained(work)
    else:
        model, meta = train(cfg, work)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(work)
    rows = build_variants(model, meta, tok, data, work, rebuild, args.per_language)
    chosen = choose(rows)
    from wacht.models.card_multilingual import write_directory

    write_directory(out, chosen, rows, meta, work, data, rebuild)
    log.info("wrote %s (%s, %.1f MB)", out, chosen["variant"], chosen["dir_mb"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
