"""Generative explanations through the real server, when an explainer has been built
(`make explainer`; build/ is not committed, so this skips on a fresh clone)."""

from __future__ import annotations

import pytest
from api_support import REPO_ROOT, make_config, metric_value, require_model, server_thread

from wacht.client import WachtClient
from wacht.v1 import moderation_pb2

EXPLAINERS = REPO_ROOT / "build" / "explainer"


def _explainer_dir():  # noqa: ANN202
    for name in ("smollm2-135m-instruct-int8", "smollm2-135m-instruct"):
        if (EXPLAINERS / name / "model.onnx").is_file():
            return EXPLAINERS / name
    pytest.skip(f"no explainer under {EXPLAINERS} (make explainer)")


@pytest.mark.slow
def test_generative_explanations_stream_and_fall_back_when_guarded() -> None:
    require_model()
    config = make_config(explainer_dir=_explainer_dir())
    with server_thread(config) as server, WachtClient(server.address, timeout=120) as c:
        assert server.server.state.explainer is not None
        events = list(c.explain("You are a stupid worthless idiot"))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "moderation" and kinds[-1] == "final"
        final = events[-1].final
        if final.fallback:
            assert final.level == moderation_pb2.EXPLANATION_LEVEL_EVIDENCE
            assert final.fallback_reason
        else:
            assert "text_delta" in kinds and final.generator
            assert final.level == moderation_pb2.EXPLANATION_LEVEL_GENERATIVE
            streamed = "".join(
                e.text_delta for e in events if e.WhichOneof("event") == "text_delta"
            )
            assert final.text.strip() and final.text.strip() in streamed.strip()
        result = c.moderate(["you idiot"], explanation="generative").results[0]
        assert result.explanation.text
        fallbacks = int(final.fallback) + int(result.explanation.fallback)
        counted = metric_value(server.metrics_text(), "wacht_explanation_fallbacks_total")
        assert counted == fallbacks
