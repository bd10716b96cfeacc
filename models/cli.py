"""`wacht models import|eval|build|export-hf ...` (also `python -m wacht.models.cli ...`).

`eval` runs in the serving environment; `import`, `build` and `export-hf` need the `train`
extra (torch, transformers, optimum), imported only when those commands run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wacht.models.data import DEFAULT_DATA_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wacht models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate a model directory on ../shared/data")
    ev.add_argument("model_dir")
    ev.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                    help="a data directory (../shared/data) or your labelled file "
                    "(.csv, .tsv, .jsonl, .parquet)")
    ev.add_argument("--task", help="with a file: the task it labels (default: the only task)")
    ev.add_argument("--text-column", default="text")
    ev.add_argument("--label-column", action="append", default=[],
                    help="with a file: the label column (default 'label'); repeat for "
                    "multi-label 0/1 columns named after the labels")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--out", help="also write the metrics to this file (e.g. metrics.json)")
    ev.add_argument("--threads", type=int, default=2)

    imp = sub.add_parser("import", help="HF sequence-classification checkpoint -> model dir")
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    imp.add_argument("--name", help="model name (default: OUT_DIR's name)")
    imp.add_argument("--task", help="task name (default: toxicity / sentiment / classification)")
    imp.add_argument("--category", action="append", default=[], metavar="LABEL=CANONICAL",
                     help="map a label to a canonical category; LABEL= removes it")
    imp.add_argument("--max-length", type=int)
    imp.add_argument("--int8", action="store_true", help="dynamic int8 quantisation")
    imp.add_argument("--language", action="append", default=[], metavar="CODE",
                     help="a language the model reads (ISO 639-1), for language routing; "
                     "repeat for several (default: none, served only when a request names it)")

    hf = sub.add_parser("export-hf", help="one head of a checkpoint -> standard HF model")
    hf.add_argument("checkpoint")
    hf.add_argument("out_dir")
    hf.add_argument("--task", required=True, help="toxicity | sentiment")

    ft = sub.add_parser("finetune", help="a new task on your labelled file (head-only, or "
                        "--mode full: encoder too), or --adapt an existing head to it "
                        "(train extra)")
    ft.add_argument("model_dir")
    ft.add_argument("--data", required=True, help=".csv, .tsv, .jsonl or .parquet")
    what = ft.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="the new task's name")
    what.add_argument("--adapt", metavar="TASK", help="re-fit this existing head's last layer "
                      "on your rows (sigmoid head: 0/1 --label-column named after its labels; "
                      "softmax head: one label column of its label names)")
    ft.add_argument("--penalty", type=float, help="with --adapt: a fixed L2 penalty on the "
                    "change (larger: closer to the shipped head; default: chosen on the "
                    "validation split)")
    ft.add_argument("--anchor-data", default=str(DEFAULT_DATA_DIR),
                    help="with --adapt: bundled training data whose texts (a fixed sample of "
                    "2,000 the head was trained on) anchor the head: the fit also keeps its "
                    "logits there ('none': no anchor)")
    ft.add_argument("--anchor-weight", type=float, default=0.1,
                    help="with --adapt: weight of that anchor (0: off; larger: less forgetting "
                    "of the original domains, less gain on yours)")
    ft.add_argument("--eval-data", default=str(DEFAULT_DATA_DIR),
                    help="with --adapt: the bundled evaluation sets the drift is measured on "
                    "('none' to skip)")
    ft.add_argument("--out", required=True, help="the new model directory")
    ft.add_argument("--text-column", default="text")
    ft.add_argument("--label-column", action="append", default=[])
    ft.add_argument("--val", help="a validation file (default: a 10%% hash split of --data)")
    ft.add_argument("--data-license", default="not stated")
    ft.add_argument("--baseline", action="store_true", help="also TF-IDF + logistic regression")
    ft.add_argument("--features", default="auto",
                    choices=["auto", "pooler", "pooler+mean", "layers"],
                    help="new task: what the grafted head reads: the pooler output; next to it "
                    "the attention-masked mean of the last hidden state (pooler+mean) or of "
                    "every encoder layer (layers); auto: the richest the graph has")
    ft.add_argument("--threads", type=int, default=2)
    ft.add_argument("--mode", default="head-only", choices=["head-only", "full"],
                    help="head-only: a linear head on the served encoder's features (fast); "
                    "full: fine-tune an encoder and head for the new --task (more data; "
                    "served as a second branch in the same graph, ~2x per forward)")
    full = ft.add_argument_group("--mode full")
    full.add_argument("--checkpoint", help="start from this training checkpoint's encoder "
                      "(multitask.save_checkpoint layout; default: all-MiniLM-L6-v2)")
    full.add_argument("--epochs", type=float, default=4.0)
    full.add_argument("--patience", type=int, default=2,
                      help="stop after this many evaluations without a better validation "
                      "macro-F1 (0: never)")
    full.add_argument("--max-minutes", type=float, default=20.0,
                      help="training time budget; the LR decays to 0 by then (0: none)")
    full.add_argument("--max-steps", type=int, default=0, help="cap on optimiser steps")
    full.add_argument("--eval-steps", type=int, default=0,
                      help="evaluate every N steps (default: once per epoch)")
    full.add_argument("--batch-size", type=int, default=32)
    full.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    full.add_argument("--head-lr", type=float, default=1e-3)
    full.add_argument("--seed", type=int, default=13)
    full.add_argument("--train-word-embeddings", action="store_true",
                      help="also train the word-embedding table (slower on CPU)")

    ca = sub.add_parser("calibrate", help="per-label thresholds on your labelled sample")
    ca.add_argument("model_dir")
    ca.add_argument("--data", required=True)
    ca.add_argument("--task", required=True)
    ca.add_argument("--target", default="f1", help="f1 | precision=0.9 | recall=0.8")
    ca.add_argument("--text-column", default="text")
    ca.add_argument("--label-column", action="append", default=[])
    ca.add_argument("--png", help="plot the precision/recall curves here (needs matplotlib)")

    sub.add_parser("build", help="train, export, quantise, evaluate (python -m wacht.models.build)",
                   add_help=False)
    return parser


def _eval_file(args: argparse.Namespace) -> int:
    import json

    from wacht.models.evaluate import evaluate_file, print_file_metrics
    from wacht.models.userdata import UserDataError

    try:
        metrics = evaluate_file(args.model_dir, args.data, args.task, args.text_column,
                                tuple(args.label_column or ["label"]), args.threads)
    except UserDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print_file_metrics(metrics)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["build"]:
        from wacht.models.build import main as build_main

        return build_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        import structlog

        from wacht.models.evaluate import main as eval_main

        # keep stdout for the results (--json is piped); runtime logs go to stderr
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

        if Path(args.data).is_file():
            return _eval_file(args)
        return eval_main(args.model_dir, args.data, args.json, args.out, args.threads)
    if args.command == "finetune":
        if args.adapt and args.mode == "full":
            print(f"error: --mode full is for new tasks (--task NAME): it trains a new encoder "
                  f"branch; --adapt {args.adapt} re-fits an existing head's last layer with the "
                  "encoder frozen (use --mode head-only)", file=sys.stderr)
            return 2
        if args.checkpoint and args.mode != "full":
            print("error: --checkpoint is for --mode full", file=sys.stderr)
            return 2
        if args.adapt:
            from wacht.models.adapt import main as adapt_main

            return adapt_main(args)
        if args.mode == "full":
            from wacht.models.finetune_full import main as full_main

            return full_main(args)
        from wacht.models.finetune import main as finetune_main

        return finetune_main(args)
    if args.command == "calibrate":
        from wacht.models.calibrate import calibrate, print_table
        from wacht.models.userdata import UserDataError

        try:
            result = calibrate(Path(args.model_dir), Path(args.data), args.task, args.target,
                               args.text_column, tuple(args.label_column or ["label"]),
                               Path(args.png) if args.png else None)
        except UserDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print_table(result)
        return 0
    if args.command == "import":
        from wacht.models.importer import import_hf, parse_category_overrides

        out = import_hf(args.hf_dir, args.out_dir, name=args.name, task=args.task,
                        categories=parse_category_overrides(args.category),
                        max_length=args.max_length, int8=args.int8,
                        languages=tuple(args.language))
        print(f"wrote {out}")
        return 0
    if args.command == "export-hf":
        from wacht.models.hf_export import export_hf

        print(f"wrote {export_hf(args.checkpoint, args.out_dir, args.task)}")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
