"""The Analysis service: raw per-task model scores through the batcher, no policy."""

from __future__ import annotations

import grpc
import numpy as np

from wacht.service.api.calls import Call, CallRunner
from wacht.service.api.moderation import model_ref, timings_proto
from wacht.service.api.state import ServingState
from wacht.service.api.validation import Violations, check_texts, check_truncation
from wacht.service.observability.logging import get_logger, texts_summary
from wacht.v1 import analysis_pb2, analysis_pb2_grpc, common_pb2

log = get_logger("wacht.api.analysis")


class AnalysisServicer(analysis_pb2_grpc.AnalysisServicer):
    def __init__(self, state: ServingState, runner: CallRunner) -> None:
        self.state = state
        self.runner = runner

    async def _analyze(
        self, request: analysis_pb2.AnalyzeRequest, call: Call
    ) -> analysis_pb2.AnalyzeResponse:
        v = Violations()
        served = self.state.model(request.model)
        manifest = served.manifest
        known = [task.name for task in manifest.tasks]
        for i, name in enumerate(request.tasks):
            if name not in known:
                v.add(f"tasks[{i}]", f"unknown task {name!r}; this model has {', '.join(known)}")
        ids, texts = check_texts(request.texts, self.state.config.limits, v)
        truncation = check_truncation(request.truncation, v)
        v.raise_if_any()
        self.state.metrics.texts.labels(call.method).inc(len(texts))
        log.debug("analyze", texts=texts_summary(texts))
        wanted = [t for t in manifest.tasks if not request.tasks or t.name in request.tasks]
        scores, timings = await served.batcher.score(
            texts,
            truncation=truncation,  # type: ignore[arg-type]
            max_windows=self.state.config.limits.max_windows_per_text,
            deadline=call.deadline,
        )
        results = []
        for text_id, text_scores in zip(ids, scores, strict=True):
            result = analysis_pb2.AnalysisResult(
                id=text_id, tokens=text_scores.tokens, windows=text_scores.windows
            )
            for task in wanted:
                values = np.asarray(text_scores.scores[task.name], dtype=np.float32)
                labels = task.labels
                if task.activation == "softmax":
                    predicted = [labels[int(np.argmax(values))].name]
                else:
                    predicted = [
                        label.name
                        for label, value in zip(labels, values, strict=True)
                        if value >= label.threshold
                    ]
                result.tasks.append(
                    analysis_pb2.TaskResult(
                        task=task.name,
                        activation=task.activation,
                        scores=[
                            common_pb2.LabelScore(
                                label=label.name, category=label.category or "", score=float(value)
                            )
                            for label, value in zip(labels, values, strict=True)
                        ],
                        predicted=predicted,
                    )
                )
            results.append(result)
        return analysis_pb2.AnalyzeResponse(
            results=results,
            timings=timings_proto(timings, call.elapsed_ns()),
            model=model_ref(served),
            request_id=call.request_id,
        )

    async def Analyze(  # noqa: N802
        self, request: analysis_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.AnalyzeResponse:
        return await self.runner.unary(
            "Analyze", context, lambda call: self._analyze(request, call)
        )
