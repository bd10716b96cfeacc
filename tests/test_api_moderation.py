"""Moderation, Analysis and Models RPCs against the real server and the default model."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from api_support import DEFAULT_MODEL

from wacht.client import WachtClient
from wacht.v1 import common_pb2, moderation_pb2

BENIGN = "Thank you so much, this was a lovely afternoon with friends."
TOXIC = "You are a stupid worthless idiot and everyone hates you, shut up."


def _score(result: moderation_pb2.ModerationResult, category: str) -> float:
    return next(c.score for c in result.categories if c.category == category)


def test_moderate_two_texts(client: WachtClient) -> None:
    response = client.moderate({"a": BENIGN, "b": TOXIC})
    assert [r.id for r in response.results] == ["a", "b"]
    benign, toxic = response.results
    assert response.model.name == "minilm-moderation"
    assert benign.model.name == response.model.name and benign.model.version
    assert response.policy == "default"
    assert response.request_id
    assert _score(toxic, "toxicity") > _score(benign, "toxicity")
    assert _score(toxic, "insult") > _score(benign, "insult")
    assert toxic.flagged and toxic.decision in (
        moderation_pb2.DECISION_REVIEW,
        moderation_pb2.DECISION_BLOCK,
    )
    assert not benign.flagged and benign.decision == moderation_pb2.DECISION_ALLOW
    for category in toxic.categories:
        assert 0.0 <= category.score <= 1.0
        assert category.review_threshold <= category.block_threshold
        assert category.flagged == (category.score >= category.review_threshold)
    assert benign.sentiment.label == "positive"
    assert [s.label for s in benign.sentiment.scores] == ["negative", "neutral", "positive"]
    assert benign.tokens > 5 and benign.windows == 1
    timings = response.timings
    assert timings.total_ns >= timings.inference_ns > 0
    assert timings.tokens >= benign.tokens + toxic.tokens


def test_client_request_id_is_used(client: WachtClient) -> None:
    request = moderation_pb2.ModerateRequest(texts=[common_pb2.TextInput(text="hi")])
    response, call = client.moderation.Moderate.with_call(
        request, metadata=[("x-request-id", "req-42")], timeout=30
    )
    assert response.request_id == "req-42"
    assert ("x-request-id", "req-42") in call.trailing_metadata()


def test_empty_ids_become_indices(client: WachtClient) -> None:
    request = moderation_pb2.ModerateRequest(
        texts=[common_pb2.TextInput(text="one"), common_pb2.TextInput(id="x", text="two")]
    )
    response = client.moderate_raw(request)
    assert [r.id for r in response.results] == ["0", "x"]


def test_analyses_categories_raw_scores(client: WachtClient) -> None:
    only_sentiment = client.moderate([TOXIC], analyses=["sentiment"]).results[0]
    assert only_sentiment.sentiment.label and not only_sentiment.categories
    only_insult = client.moderate([TOXIC], categories=["insult"], raw_scores=True).results[0]
    assert [c.category for c in only_insult.categories] == ["insult"]
    raw = {(s.label, s.category) for s in only_insult.raw_scores}
    assert ("offensive", "toxicity") in raw and ("positive", "") in raw


def test_threshold_override_changes_decision(client: WachtClient) -> None:
    strict = {c: {"review": 0.0, "block": 0.0} for c in ("toxicity", "hate", "insult", "profanity")}
    result = client.moderate([BENIGN], overrides=strict).results[0]
    assert result.decision == moderation_pb2.DECISION_BLOCK
    off = {c: {"enabled": False} for c in ("toxicity", "hate", "insult", "profanity")}
    assert client.moderate([TOXIC], overrides=off).results[0].decision == (
        moderation_pb2.DECISION_ALLOW
    )


def test_evidence_explanation_and_spans(client: WachtClient) -> None:
    result = client.moderate([TOXIC], explanation="evidence", evidence_spans=True).results[0]
    explanation = result.explanation
    assert explanation.level == moderation_pb2.EXPLANATION_LEVEL_EVIDENCE
    assert explanation.text and explanation.reasons
    assert result.spans, "a flagged text gets evidence spans"
    for span in result.spans:
        assert TOXIC[span.begin : span.end] == span.text
        assert TOXIC.encode()[span.byte_begin : span.byte_end].decode() == span.text


def test_generative_without_explainer_falls_back(client: WachtClient) -> None:
    result = client.moderate([TOXIC], explanation="generative").results[0]
    assert result.explanation.text
    assert result.explanation.fallback
    assert result.explanation.level == moderation_pb2.EXPLANATION_LEVEL_EVIDENCE


def test_explain_stream(client: WachtClient) -> None:
    events = list(client.explain(TOXIC))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "moderation" and kinds[-1] == "final"
    assert set(kinds[1:-1]) <= {"text_delta"}
    assert events[0].moderation.flagged
    assert events[-1].final.text


def test_list_policies_and_categories(client: WachtClient) -> None:
    policies = client.list_policies().policies
    default = [p for p in policies if p.is_default]
    assert len(default) == 1 and default[0].name == "default"
    assert {c.category for c in default[0].categories} >= {"toxicity", "insult"}
    categories = {c.name: c.description for c in client.list_categories().categories}
    assert "hate" in categories and categories["hate"]


def test_analyze_all_and_selected_tasks(client: WachtClient) -> None:
    response = client.analyze([BENIGN, TOXIC])
    benign, toxic = response.results
    tasks = {t.task: t for t in benign.tasks}
    assert set(tasks) == {"sentiment", "toxicity"}
    sentiment = tasks["sentiment"]
    assert sentiment.activation == "softmax"
    assert abs(sum(s.score for s in sentiment.scores) - 1.0) < 1e-3
    assert sentiment.predicted == ["positive"]
    toxic_scores = {s.label: s.score for s in toxic.tasks[1].scores}
    assert toxic.tasks[1].task == "toxicity" and "offensive" in toxic.tasks[1].predicted
    assert toxic_scores["offensive"] > 0.5
    only = client.analyze([BENIGN], tasks=["toxicity"]).results[0]
    assert [t.task for t in only.tasks] == ["toxicity"]
    assert response.timings.inference_ns > 0 and response.model.name == "minilm-moderation"


def test_long_text_uses_windows(client: WachtClient) -> None:
    long_text = "The weather was fine and we walked along the river. " * 60 + TOXIC
    window = client.moderate([long_text]).results[0]
    head = client.moderate([long_text], truncation="head").results[0]
    assert window.windows > 1 and head.windows == 1
    assert _score(window, "insult") > _score(head, "insult")


def test_models_list_and_info(client: WachtClient) -> None:
    models = client.list_models().models
    assert [m.name for m in models] == ["minilm-moderation"] and models[0].is_default
    info = client.model_info("minilm-moderation")
    assert info == client.model_info("")
    assert {t.name for t in info.tasks} == {"sentiment", "toxicity"}
    assert set(info.categories) >= {"toxicity", "hate", "insult", "profanity"}
    assert info.provider == "CPUExecutionProvider" and info.provider in info.providers
    assert info.limits.max_texts_per_request == 256 and info.limits.max_length > 0
    assert info.card and info.provenance.base_model and info.precision
    files = {f.path: f for f in info.files}
    assert "model.onnx" in files
    onnx = DEFAULT_MODEL / "model.onnx"
    assert files["model.onnx"].sha256 == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert files["model.onnx"].size_bytes == onnx.stat().st_size


def test_unknown_model_info(client: WachtClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.model_info("nope")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_odd_inputs_do_not_break_the_server(client: WachtClient) -> None:
    emoji = "\U0001f600" * (65536 // 4)
    texts = ["", "\x00\x00nul\x00", emoji, "\u202e\ufeff\u200b", "a" * 5000]
    response = client.moderate(texts)
    assert [r.id for r in response.results] == ["0", "1", "2", "3", "4"]
    assert response.results[2].windows >= 1
    assert client.health() == 1  # SERVING
