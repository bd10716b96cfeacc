"""PyTriton peer: one onnxruntime Python callable per task behind Triton's dynamic batcher.

Each task's ONNX export (optimum folder: model.onnx + tokenizer.json) is served as Triton model
`<task>`: input `text` (BYTES, [batch, 1]), output `scores` (FP32, [batch, labels]) after the
head's activation (sigmoid for multi-label, softmax otherwise, from config.json). Triton
batches requests (dynamic batcher, max_batch_size, max queue delay); the callable tokenises the
batch (truncation to the model window, padding to the longest) and runs one session call.
Clients speak Triton's gRPC API (KServe v2). Run in bench/.venv-pytriton:

    python bench/peers/triton_server.py --grpc-port 8001 --http-port 8000 --metrics-port 8002 \
        --model toxicity=ONNX_DIR ...

Stop with SIGTERM (SIGINT is ignored when it runs in the background).
Triton's Python backend stub links the system libpython; start this with LD_LIBRARY_PATH set
to the running interpreter's own libpython directory (run.py does), or model load fails with
`'_thread.RLock' object has no attribute '_recursion_count'`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tokenizers import Tokenizer


def make_infer(onnx_dir: Path, max_length: int, threads: int):
    config = json.loads((onnx_dir / "config.json").read_text())
    sigmoid = config.get("problem_type") == "multi_label_classification"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    wanted = {i.name for i in session.get_inputs()}
    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))

    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        texts = [t[0].decode("utf-8") if isinstance(t[0], bytes) else str(t[0]) for t in text]
        encoded = tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        (logits,) = session.run(None, {k: v for k, v in feed.items() if k in wanted})
        if sigmoid:
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores = shifted / shifted.sum(axis=1, keepdims=True)
        return {"scores": scores.astype(np.float32)}

    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return infer, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="TASK=ONNX_DIR")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    config = TritonConfig(
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        http_address="127.0.0.1", http_port=args.http_port,
        metrics_port=args.metrics_port, allow_metrics=args.metrics_port > 0,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        for item in args.model:
            task, path = item.split("=", 1)
            infer, labels = make_infer(Path(path), args.max_length, threads)
            triton.bind(
                model_name=task,
                infer_func=infer,
                inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="scores", dtype=np.float32, shape=(len(labels),))],
                config=ModelConfig(
                    max_batch_size=args.max_batch_size,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
                ),
                strict=True,
            )
            print(f"triton model {task}: labels {labels}", flush=True)
        print(f"pytriton serving on 127.0.0.1:{args.grpc_port} (gRPC) with {threads} ORT threads",
              flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
