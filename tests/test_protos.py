"""The committed stubs in clients/python/wacht/v1 are exactly what the protos generate."""

from __future__ import annotations

from pathlib import Path

from wacht.service.protos import CLIENT_ROOT, generate


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert generated, "protoc wrote nothing"
    committed_dir = CLIENT_ROOT / "wacht" / "v1"
    names = {p.name for p in generated}
    committed = {p.name for p in committed_dir.iterdir() if p.name.endswith((".py", ".pyi"))}
    committed.discard("__init__.py")
    names.discard("__init__.py")
    assert names == committed, "stub files differ; run `python -m wacht.service.protos`"
    stale = [p.name for p in generated if p.read_bytes() != (committed_dir / p.name).read_bytes()]
    assert not stale, f"stubs out of date: {stale}; run `python -m wacht.service.protos`"


def test_stubs_import_as_top_level_package() -> None:
    from wacht.v1 import analysis_pb2_grpc, models_pb2_grpc, moderation_pb2, moderation_pb2_grpc

    assert moderation_pb2.DESCRIPTOR.package == "wacht.v1"
    assert hasattr(moderation_pb2_grpc, "ModerationServicer")
    assert hasattr(analysis_pb2_grpc, "AnalysisServicer")
    assert hasattr(models_pb2_grpc, "ModelsServicer")
