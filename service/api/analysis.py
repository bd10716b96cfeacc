"""The Analysis service: raw per-task model scores through the batcher, no policy."""

from __future__ import annotations

import grpc
import numpy as np

from wacht.service.api.calls import Call, CallRunner
from wacht.service.api.moderation import model_refs, timings_proto
from wacht.service.api.state import ServingState
from wacht.service.api.validation import (
    Violations,
    check_language,
    check_texts,
    check_truncation,
)
from wacht.service.observability.logging import get_logger, texts_summary
from wacht.service.observability.redact import shown
from wacht.service.runtime.model_dir import TaskSpec
from wacht.v1 import analysis_pb2, analysis_pb2_grpc, common_pb2

log = get_logger("wacht.api.analysis")


def task_result(task: TaskSpec, scores: np.ndarray) -> analysis_pb2.TaskResult:
    """One task's scores; predicted = the arg-max (softmax) or the labels at or above their
    threshold (sigmoid)."""
    values = np.asarray(scores, dtype=np.float32)
    labels = task.labels
    if task.activation == "softmax":
        predicted = [labels[int(np.argmax(values))].name]
    else:
        predicted = [
            label.name for label, value in zip(labels, values, strict=True)
            if value >= label.threshold
        ]
    return analysis_pb2.TaskResult(
        task=task.name,
        activation=task.activation,
        scores=[
            common_pb2.LabelScore(label=label.name, category=label.category or "",
                                  score=float(value))
            for label, value in zip(labels, values, strict=True)
        ],
        predicted=predicted,
    )


class AnalysisServicer(analysis_pb2_grpc.AnalysisServicer):
    def __init__(self, state: ServingState, runner: CallRunner) -> None:
        self.state = state
        self.runner = runner

    async def analyze(
        self, request: analysis_pb2.AnalyzeRequest, call: Call
    ) -> analysis_pb2.AnalyzeResponse:
        v = Violations()
        target = self.state.target(request.model)
        known = target.tasks
        for i, name in enumerate(request.tasks):
            if name not in known:
                v.add(
                    f"tasks[{i}]", f"unknown task {shown(name)}; this model has {', '.join(known)}"
                )
        ids, texts = check_texts(request.texts, self.state.config.limits, v)
        truncation = check_truncation(request.truncation, v)
        language = check_language(request.language, v, "language")
        v.raise_if_any()
        with call.admit([m.name for m in target.models], len(texts)):
            self.state.metrics.texts.labels(call.method).inc(len(texts))
            log.debug("analyze", texts=texts_summary(texts))
            scored, timings = await target.core.score(
                texts, truncation=truncation, deadline=call.deadline, model=request.model,
                language=language, caller=call.flow,
            )
        refs, common = model_refs(target, [s.model for s in scored])
        results = []
        for text_id, item, ref in zip(ids, scored, refs, strict=True):
            text_scores = item.scores
            result = analysis_pb2.AnalysisResult(
                id=text_id, tokens=text_scores.tokens, windows=text_scores.windows, model=ref,
                language=item.route.language, language_confidence=item.route.confidence,
            )
            manifest = target.served(item.model).manifest
            for task in manifest.tasks:
                if request.tasks and task.name not in request.tasks:
                    continue
                result.tasks.append(task_result(task, text_scores.scores[task.name]))
            results.append(result)
        response = analysis_pb2.AnalyzeResponse(
            results=results,
            timings=timings_proto(timings, call.elapsed_ns()),
            request_id=call.request_id,
        )
        if common is not None:
            response.model.CopyFrom(common)
        return response

    async def Analyze(  # noqa: N802
        self, request: analysis_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> analysis_pb2.AnalyzeResponse:
        return await self.runner.unary(
            "Analyze", context, lambda call: self.analyze(request, call)
        )
