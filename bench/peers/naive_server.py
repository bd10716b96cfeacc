"""The naive stack: Hugging Face `transformers` pipelines behind a minimal grpc.aio server.

Speaks Wacht's own `wacht.v1.Analysis/Analyze` (so one gRPC client drives Wacht and this
stack): `model` selects the task's pipeline (one standard HF checkpoint per task), each request
is one pipeline call = one forward of its texts (batch_size = texts in the request), run on the
event loop with no batching across requests. Texts longer than the model's window are truncated.
Run in bench/.venv-naive with the repository root on PYTHONPATH:

    python bench/peers/naive_server.py --address 127.0.0.1:50061 --model toxicity=HF_DIR ...
"""

from __future__ import annotations

import argparse
import asyncio
import os

import grpc
import torch
from transformers import pipeline

from wacht.v1 import analysis_pb2, analysis_pb2_grpc, common_pb2


class NaiveAnalysis(analysis_pb2_grpc.AnalysisServicer):
    def __init__(self, pipes: dict[str, object], max_length: int) -> None:
        self.pipes = pipes
        self.max_length = max_length

    async def Analyze(  # noqa: N802 (gRPC method name)
        self, request: analysis_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.AnalyzeResponse:
        task = request.model or (request.tasks[0] if request.tasks else next(iter(self.pipes)))
        pipe = self.pipes.get(task)
        if pipe is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown model {task!r}")
        if not request.texts:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no texts")
        texts = [t.text for t in request.texts]
        outputs = pipe(
            texts, batch_size=len(texts), top_k=None, truncation=True, max_length=self.max_length
        )
        activation = "sigmoid" if pipe.model.config.problem_type == "multi_label_classification" \
            else "softmax"
        results = []
        for text_input, scores in zip(request.texts, outputs, strict=True):
            task_result = analysis_pb2.TaskResult(
                task=task,
                activation=activation,
                scores=[common_pb2.LabelScore(label=s["label"], score=s["score"]) for s in scores],
            )
            results.append(analysis_pb2.AnalysisResult(id=text_input.id, tasks=[task_result]))
        return analysis_pb2.AnalyzeResponse(results=results)


async def serve(address: str, models: dict[str, str], max_length: int) -> None:
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    pipes = {task: pipeline("text-classification", model=path, device="cpu")
             for task, path in models.items()}
    for pipe in pipes.values():  # warm-up forward
        pipe(["warm up"], top_k=None, truncation=True, max_length=max_length)
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1024)])
    analysis_pb2_grpc.add_AnalysisServicer_to_server(NaiveAnalysis(pipes, max_length), server)
    server.add_insecure_port(address)
    await server.start()
    print(f"naive stack serving {sorted(pipes)} on {address} with {threads} torch threads",
          flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50061")
    parser.add_argument("--model", action="append", required=True, metavar="TASK=HF_DIR")
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.model)
    asyncio.run(serve(args.address, models, args.max_length))


if __name__ == "__main__":
    main()
