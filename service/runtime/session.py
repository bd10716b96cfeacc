"""ONNX Runtime sessions: execution provider choice and thread settings.

CUDA is asked for, never assumed: onnxruntime silently falls back to CPU when the CUDA
provider cannot be loaded (CPU-only wheel, missing libraries, no device), so the providers
the session really uses are read back with `get_providers()` and a fallback is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import structlog

log = structlog.get_logger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class SessionSettings:
    device: str = "cpu"  # "cpu", "cuda" or "cuda:<id>"
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per physical core)
    inter_op_threads: int = 1
    allow_spinning: bool = False  # busy-wait between ops; off saves CPU on a shared host


def requested_providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return [CPU]
    if kind == "cuda":
        if index and not index.isdigit():
            raise ValueError(f"device {device!r}: expected cuda or cuda:<index>")
        return [(CUDA, {"device_id": index or "0"}), CPU]
    raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:<index>")


def session_options(settings: SessionSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(0, settings.intra_op_threads)
    options.inter_op_num_threads = max(0, settings.inter_op_threads)
    if not settings.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def create_session(model_file: str | Path, settings: SessionSettings) -> ort.InferenceSession:
    """An InferenceSession on the requested device, falling back to CPU with a warning."""
    providers = requested_providers(settings.device)
    wants_cuda = settings.device.startswith("cuda")
    if wants_cuda and CUDA not in ort.get_available_providers():
        log.warning(
            "cuda_unavailable",
            reason="this onnxruntime build has no CUDAExecutionProvider "
            "(install the gpu extra: onnxruntime-gpu)",
            available=ort.get_available_providers(),
            using=[CPU],
        )
        providers = [CPU]
    session = ort.InferenceSession(
        str(model_file), sess_options=session_options(settings), providers=providers
    )
    in_use = session.get_providers()
    if wants_cuda and CUDA not in in_use and providers != [CPU]:
        log.warning(
            "cuda_fallback",
            reason="onnxruntime could not initialise CUDA (driver, CUDA/cuDNN libraries "
            "or device missing) and fell back",
            using=in_use,
        )
    return session
