"""The Models service: what is served, with everything needed to audit it."""

from __future__ import annotations

from typing import Any

import grpc

from wacht.service.api.calls import Call, CallRunner
from wacht.service.api.state import ServedModel, ServingState
from wacht.v1 import models_pb2, models_pb2_grpc


def _provenance(raw: dict[str, Any]) -> models_pb2.Provenance:
    datasets = []
    for item in raw.get("datasets") or []:
        if isinstance(item, dict):
            size = item.get("size", 0)
            datasets.append(
                models_pb2.DatasetInfo(
                    name=str(item.get("name", "")),
                    source=str(item.get("source", "")),
                    license=str(item.get("license", "")),
                    split=str(item.get("split", "")),
                    size=int(size) if isinstance(size, int) and size >= 0 else 0,
                )
            )
    return models_pb2.Provenance(
        base_model=str(raw.get("base_model", "")),
        base_model_license=str(raw.get("base_model_license", "")),
        license=str(raw.get("license", "")),
        datasets=datasets,
        rebuild_command=str(raw.get("rebuild_command", "")),
        created=str(raw.get("created", "")),
    )


def model_info(served: ServedModel, state: ServingState) -> models_pb2.ModelInfo:
    manifest = served.manifest
    model_dir = served.engine.model_dir
    limits = state.config.limits
    batching = state.config.batching
    files = []
    for path, digest in sorted(model_dir.checksums.items()):
        file = model_dir.path / path
        size = file.stat().st_size if file.is_file() else 0
        files.append(models_pb2.FileChecksum(path=path, sha256=digest, size_bytes=size))
    providers = list(served.engine.providers)
    return models_pb2.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        is_default=served.is_default,
        tasks=[
            models_pb2.TaskInfo(
                name=task.name,
                output=task.output,
                activation=task.activation,
                labels=[
                    models_pb2.LabelInfo(
                        name=label.name,
                        category=label.category or "",
                        default_threshold=label.threshold,
                    )
                    for label in task.labels
                ],
            )
            for task in manifest.tasks
        ],
        categories=list(manifest.categories),
        limits=models_pb2.Limits(
            max_texts_per_request=limits.max_texts_per_request,
            max_text_bytes=limits.max_text_bytes,
            max_length=manifest.max_length,
            max_windows_per_text=limits.max_windows_per_text,
            max_batch_tokens=batching.max_batch_tokens,
            max_batch_size=batching.max_batch_size,
            max_queue_texts=batching.max_queue_texts,
        ),
        provider=providers[0] if providers else "",
        providers=providers,
        provenance=_provenance(manifest.provenance),
        card=model_dir.read_text("CARD.md"),
        metrics_json=model_dir.read_text("metrics.json"),
        files=files,
        precision=manifest.precision,
        languages=list(manifest.languages),
    )


def routing_info(state: ServingState) -> models_pb2.Routing:
    if state.core is None:
        return models_pb2.Routing()
    router = state.core.router
    return models_pb2.Routing(
        languages=dict(router.table.languages),
        fallback=router.table.fallback,
        min_confidence=router.table.min_confidence,
        detector=getattr(router.detector, "name", "") or "",
    )


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, state: ServingState, runner: CallRunner) -> None:
        self.state = state
        self.runner = runner

    async def list_models(
        self, request: models_pb2.ListModelsRequest, call: Call
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[model_info(m, self.state) for m in self.state.models.values()],
            routing=routing_info(self.state),
        )

    async def ListModels(  # noqa: N802
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return await self.runner.unary(
            "ListModels", context, lambda call: self.list_models(request, call)
        )

    async def get_model_info(
        self, request: models_pb2.GetModelInfoRequest, call: Call
    ) -> models_pb2.ModelInfo:
        return model_info(self.state.model(request.name, "name"), self.state)

    async def GetModelInfo(  # noqa: N802
        self, request: models_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return await self.runner.unary(
            "GetModelInfo", context, lambda call: self.get_model_info(request, call)
        )
