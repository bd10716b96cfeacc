"""Launch Infinity 0.0.78 (optimum/ONNX engine) with two fixes, then hand over to its own CLI.

Run in bench/.venv-infinity; every argument after the launcher's own goes to `infinity_emb v2`:

    python bench/peers/infinity_launcher.py [--max-length 512] [--no-truncation-fix] \
        v2 --model-id /abs/onnx/folder --engine optimum --onnx-disable-optimize ...

What is patched (in memory only; the installed package is untouched):
1. `infinity_emb.transformer.classifier.optimum.get_onnx_files` returns the ONNX file name
   relative to the model folder. Shipped, it returns the absolute path from globbing the local
   folder, which optimum 2.x's `ORTModel.from_pretrained(folder, file_name=...)` rejects with
   "Could not find any ONNX files with target file name /abs/.../model.onnx, only found:
   [PosixPath('model.onnx')]", and the server exits at start-up.
2. `OptimumClassifier.encode_core` calls its transformers pipeline with `truncation=True,
   max_length=N` (N = --max-length, the model's window). Shipped, it calls the pipeline without
   truncation: one text over the model's 512 positions raises inside the batching thread, that
   worker dies, every later /classify call hangs, and /health still answers 200.
Nothing else changes: same batching, same pipeline (which itself runs batch_size=1 per text).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def patch(max_length: int | None) -> None:
    import infinity_emb.transformer.classifier.optimum as inf_optimum

    shipped_get_onnx_files = inf_optimum.get_onnx_files

    def relative_onnx_file(*, model_name_or_path: str, **kwargs: object) -> Path:
        found = shipped_get_onnx_files(model_name_or_path=model_name_or_path, **kwargs)
        folder = Path(model_name_or_path)
        if found.is_absolute() and folder.is_dir():
            return found.relative_to(folder.resolve())
        return found

    inf_optimum.get_onnx_files = relative_onnx_file

    if max_length is not None:

        def encode_core(self: inf_optimum.OptimumClassifier, sentences: list[str]) -> dict:
            return self._pipe(sentences, truncation=True, max_length=max_length)

        inf_optimum.OptimumClassifier.encode_core = encode_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--no-truncation-fix", action="store_true",
                        help="keep the shipped classifier (to reproduce the worker crash)")
    args, rest = parser.parse_known_args()
    patch(None if args.no_truncation_fix else args.max_length)

    from infinity_emb.cli import cli

    sys.argv = ["infinity_emb", *rest]
    cli()


if __name__ == "__main__":
    main()
