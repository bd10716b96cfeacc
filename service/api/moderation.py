"""The Moderation service: Moderate, ModerateStream, Explain, ListPolicies, ListCategories."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from wacht.service.api.calls import Call, CallRunner, log_failure, to_api_error
from wacht.service.api.handlers import Undecodable
from wacht.service.api.state import ServedModel, ServingState, Target
from wacht.service.api.validation import (
    Violations,
    check_language,
    check_texts,
    moderate_options,
)
from wacht.service.moderation.moderator import ExplanationOutcome, TextOutcome
from wacht.service.moderation.taxonomy import CATEGORIES
from wacht.service.observability.logging import get_logger, texts_summary
from wacht.v1 import common_pb2, moderation_pb2, moderation_pb2_grpc

log = get_logger("wacht.api.moderation")
DECISIONS = {
    "allow": moderation_pb2.DECISION_ALLOW,
    "review": moderation_pb2.DECISION_REVIEW,
    "block": moderation_pb2.DECISION_BLOCK,
}
LEVELS = {
    "none": moderation_pb2.EXPLANATION_LEVEL_NONE,
    "evidence": moderation_pb2.EXPLANATION_LEVEL_EVIDENCE,
    "generative": moderation_pb2.EXPLANATION_LEVEL_GENERATIVE,
}


def _decision(action: str) -> int:
    return DECISIONS.get(action, moderation_pb2.DECISION_UNSPECIFIED)


def _span(span: Any) -> moderation_pb2.EvidenceSpan:
    return moderation_pb2.EvidenceSpan(
        category=span.category,
        begin=span.begin,
        end=span.end,
        byte_begin=span.byte_begin,
        byte_end=span.byte_end,
        score=span.score,
        text=span.text,
    )


def explanation_proto(outcome: ExplanationOutcome) -> moderation_pb2.Explanation:
    return moderation_pb2.Explanation(
        level=LEVELS.get(outcome.level, moderation_pb2.EXPLANATION_LEVEL_UNSPECIFIED),
        text=outcome.text,
        reasons=[
            moderation_pb2.Reason(
                category=r.category,
                score=r.score,
                threshold=r.threshold,
                action=_decision(r.action),
                spans=[_span(s) for s in r.spans],
            )
            for r in outcome.reasons
        ],
        fallback=outcome.fallback,
        fallback_reason=outcome.fallback_reason,
        suggested_rewrite=outcome.suggested_rewrite,
        generator=outcome.generator,
        language=outcome.language,
    )


def result_proto(
    text_id: str, outcome: TextOutcome, model: common_pb2.ModelRef
) -> moderation_pb2.ModerationResult:
    result = moderation_pb2.ModerationResult(
        id=text_id,
        decision=_decision(outcome.decision),
        flagged=outcome.flagged,
        categories=[
            moderation_pb2.CategoryScore(
                category=c.category,
                score=c.score,
                review_threshold=c.review_threshold,
                block_threshold=c.block_threshold,
                action=_decision(c.action),
                flagged=c.flagged,
            )
            for c in outcome.categories
        ],
        spans=[_span(s) for s in outcome.spans],
        raw_scores=[
            common_pb2.LabelScore(label=label, category=category or "", score=score)
            for label, category, score in outcome.raw_scores
        ],
        model=model,
        tokens=outcome.tokens,
        windows=outcome.windows,
        language=outcome.language,
        language_confidence=outcome.language_confidence,
    )
    if outcome.sentiment_label:
        result.sentiment.label = outcome.sentiment_label
        result.sentiment.scores.extend(
            common_pb2.LabelScore(label=label, score=score)
            for label, score in outcome.sentiment_scores
        )
    if outcome.explanation is not None:
        result.explanation.CopyFrom(explanation_proto(outcome.explanation))
    return result


def model_ref(served: ServedModel) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=served.manifest.name, version=served.manifest.version)


def model_refs(target: Target, names: list[str]) -> tuple[list[common_pb2.ModelRef],
                                                          common_pb2.ModelRef | None]:
    """A ModelRef per text (the model that scored it, even if swapped out since), and the
    response-level one when every text used the same model."""
    refs = {name: model_ref(target.served(name)) for name in dict.fromkeys(names)}
    return [refs[n] for n in names], next(iter(refs.values())) if len(refs) == 1 else None


def timings_proto(timings: Any, total_ns: int, explain_ns: int = 0) -> common_pb2.Timings:
    return common_pb2.Timings(
        queue_ns=max(0, int(timings.queue_ns)),
        tokenize_ns=max(0, int(timings.tokenize_ns)),
        inference_ns=max(0, int(timings.inference_ns)),
        explain_ns=explain_ns,
        total_ns=total_ns,
        tokens=int(timings.tokens),
    )


class ModerationServicer(moderation_pb2_grpc.ModerationServicer):
    def __init__(self, state: ServingState, runner: CallRunner) -> None:
        self.state = state
        self.runner = runner

    async def moderate(
        self, request: moderation_pb2.ModerateRequest, call: Call, prefix: str = ""
    ) -> moderation_pb2.ModerateResponse:
        v = Violations(prefix)
        target = self.state.target(request.model, prefix + "model")
        ids, texts = check_texts(request.texts, self.state.config.limits, v)
        language = check_language(request.language, v, "language")
        options = moderate_options(
            request, target.categories, target.policies, v, call.deadline, call.flow
        )
        v.raise_if_any()
        with call.admit([m.name for m in target.models], len(texts)):
            self.state.metrics.texts.labels(call.method).inc(len(texts))
            log.debug("moderate", texts=texts_summary(texts))
            outcomes, timings, policy = await target.core.moderate(
                texts, options, model=request.model, language=language
            )
        refs, common = model_refs(target, [o.model for o in outcomes])
        response = moderation_pb2.ModerateResponse(
            results=[
                result_proto(i, o, r) for i, o, r in zip(ids, outcomes, refs, strict=True)
            ],
            timings=timings_proto(timings, call.elapsed_ns(), timings.explain_ns),
            policy=policy,
            request_id=call.request_id,
        )
        if common is not None:
            response.model.CopyFrom(common)
        return response

    async def Moderate(  # noqa: N802
        self, request: moderation_pb2.ModerateRequest, context: grpc.aio.ServicerContext
    ) -> moderation_pb2.ModerateResponse:
        return await self.runner.unary(
            "Moderate", context, lambda call: self.moderate(request, call)
        )

    async def _stream_one(
        self, sequence: int, message: moderation_pb2.ModerateStreamRequest, call: Call
    ) -> moderation_pb2.ModerateStreamResponse:
        if isinstance(message, Undecodable):
            reply = moderation_pb2.ModerateStreamResponse(sequence=sequence)
            reply.error.CopyFrom(message.error().to_status_proto())
            return reply
        reply = moderation_pb2.ModerateStreamResponse(
            message_id=message.message_id, sequence=sequence
        )
        item = dataclasses.replace(
            call, request_id=f"{call.request_id}.{sequence}", started=time.monotonic()
        )
        try:
            reply.response.CopyFrom(await self.moderate(message.request, item, "request."))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = to_api_error(exc, "request.")
            reply.error.CopyFrom(error.to_status_proto())
            log_failure(error, sequence=sequence)
        return reply

    def _stream(self, request_iterator: AsyncIterator[moderation_pb2.ModerateStreamRequest]) -> Any:
        limit = self.state.config.limits.stream_inflight_messages
        gauge = self.state.metrics.stream_inflight

        async def body(call: Call) -> AsyncIterator[moderation_pb2.ModerateStreamResponse]:
            slots = asyncio.Semaphore(limit)
            pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()
            reader_error: list[BaseException] = []

            async def reader() -> None:
                sequence = 0
                try:
                    iterator = aiter(request_iterator)
                    while True:
                        # Take a slot before reading: while `limit` messages are unanswered
                        # the stream is not read, and HTTP/2 flow control holds the client.
                        await slots.acquire()
                        try:
                            message = await anext(iterator)
                        except StopAsyncIteration:
                            slots.release()
                            break
                        gauge.inc()
                        task = asyncio.create_task(self._stream_one(sequence, message, call))
                        await pending.put(task)
                        sequence += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    reader_error.append(exc)
                finally:
                    pending.put_nowait(None)

            reader_task = asyncio.create_task(reader())
            try:
                while True:
                    task = await pending.get()
                    if task is None:
                        break
                    try:
                        reply = await task
                    finally:
                        gauge.dec()
                    yield reply
                    slots.release()
                if reader_error:
                    raise reader_error[0]
            finally:
                reader_task.cancel()
                while not pending.empty():
                    leftover = pending.get_nowait()
                    if leftover is not None:
                        leftover.cancel()
                        gauge.dec()

        return body

    async def ModerateStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[moderation_pb2.ModerateStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[moderation_pb2.ModerateStreamResponse]:
        async for reply in self.runner.streaming(
            "ModerateStream", context, self._stream(request_iterator)
        ):
            yield reply

    def explain(self, request: moderation_pb2.ExplainRequest) -> Any:
        """The body of an Explain call: events for `request`, given the Call."""
        async def body(call: Call) -> AsyncIterator[moderation_pb2.ExplainResponse]:
            v = Violations()
            target = self.state.target(request.model)
            ids, texts = check_texts(
                [request.text], self.state.config.limits, v, "text", single=True
            )
            language = check_language(request.language, v, "language")
            as_moderate = moderation_pb2.ModerateRequest(
                policy=request.policy,
                explanation=moderation_pb2.EXPLANATION_LEVEL_GENERATIVE,
                suggest_rewrite=request.suggest_rewrite,
                evidence_spans=True,
            )
            for key, value in request.threshold_overrides.items():
                as_moderate.threshold_overrides[key].CopyFrom(value)
            options = moderate_options(
                as_moderate, target.categories, target.policies, v, call.deadline, call.flow
            )
            v.raise_if_any()
            with call.admit([m.name for m in target.models], 1):
                self.state.metrics.texts.labels(call.method).inc(1)
                text_id = request.text.id or "0"
                events = target.core.explain_stream(
                    texts[0], options, model=request.model, language=language
                )
                async for event in events:
                    if isinstance(event, str):
                        yield moderation_pb2.ExplainResponse(text_delta=event)
                    elif isinstance(event, ExplanationOutcome):
                        yield moderation_pb2.ExplainResponse(final=explanation_proto(event))
                    else:
                        ref = model_ref(target.served(event.model))
                        yield moderation_pb2.ExplainResponse(
                            moderation=result_proto(text_id, event, ref)
                        )

        return body

    async def Explain(  # noqa: N802
        self, request: moderation_pb2.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[moderation_pb2.ExplainResponse]:
        async for reply in self.runner.streaming(
            "Explain", context, self.explain(request)
        ):
            yield reply

    async def list_policies(
        self, request: moderation_pb2.ListPoliciesRequest, call: Call
    ) -> moderation_pb2.ListPoliciesResponse:
        store = self.state.model("").policies
        policies = []
        for name in store.names():
            policy = store.get(name)
            policies.append(
                moderation_pb2.Policy(
                    name=policy.name,
                    description=policy.description,
                    is_default=policy.name == store.default_name,
                    source=policy.source,
                    categories=[
                        moderation_pb2.CategoryThresholds(
                            category=category,
                            enabled=rule.enabled,
                            review=rule.review,
                            block=rule.block,
                        )
                        for category, rule in policy.rules.items()
                    ],
                )
            )
        return moderation_pb2.ListPoliciesResponse(policies=policies)

    async def ListPolicies(  # noqa: N802
        self, request: moderation_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> moderation_pb2.ListPoliciesResponse:
        return await self.runner.unary(
            "ListPolicies", context, lambda call: self.list_policies(request, call)
        )

    async def list_categories(
        self, request: moderation_pb2.ListCategoriesRequest, call: Call
    ) -> moderation_pb2.ListCategoriesResponse:
        return moderation_pb2.ListCategoriesResponse(
            categories=[
                moderation_pb2.Category(name=name, description=description)
                for name, description in CATEGORIES.items()
            ]
        )

    async def ListCategories(  # noqa: N802
        self, request: moderation_pb2.ListCategoriesRequest, context: grpc.aio.ServicerContext
    ) -> moderation_pb2.ListCategoriesResponse:
        return await self.runner.unary(
            "ListCategories", context, lambda call: self.list_categories(request, call),
            needs_models=False,
        )
