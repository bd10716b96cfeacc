"""Two models served at once, texts routed by language: English to the default model,
German to the multilingual one — through the real server, with a real gRPC client."""

from __future__ import annotations

import grpc
import pytest
from api_support import DEFAULT_MODEL, REPO_ROOT, make_config, server_thread

from wacht.client import WachtClient, error_details
from wacht.v1 import moderation_pb2

MULTILINGUAL = REPO_ROOT / "models" / "use-multilingual-moderation"
EN_MODEL, DE_MODEL = "minilm-moderation", "use-multilingual-moderation"

MIXED = {
    "en-kind": "Thank you so much, this was a lovely afternoon with friends.",
    "de-kind": "Vielen Dank für die schnelle Hilfe, das war wirklich sehr nett von Ihnen.",
    "en-rude": "You are a stupid worthless idiot and everyone hates you, shut up.",
    "de-rude": "Du bist ein widerlicher dummer Idiot, halt endlich deine verdammte Klappe!",
}


def _score(result: moderation_pb2.ModerationResult, category: str) -> float:
    return next(c.score for c in result.categories if c.category == category)


@pytest.fixture(scope="module")
def client():
    if not (MULTILINGUAL / "manifest.yaml").is_file():
        pytest.skip(f"multilingual model not present at {MULTILINGUAL}")
    config = make_config()
    config.models = [DEFAULT_MODEL, MULTILINGUAL]
    with server_thread(config) as server, WachtClient(server.address, timeout=60) as c:
        yield c


def test_mixed_request_is_split_across_models_and_kept_in_order(client: WachtClient) -> None:
    response = client.moderate(MIXED)
    assert [r.id for r in response.results] == list(MIXED)
    assert [r.language for r in response.results] == ["en", "de", "en", "de"]
    assert [r.model.name for r in response.results] == [EN_MODEL, DE_MODEL, EN_MODEL, DE_MODEL]
    assert all(r.language_confidence > 0.5 for r in response.results)
    assert not response.model.name  # several models answered
    by_id = {r.id: r for r in response.results}
    for lang in ("en", "de"):
        rude, kind = by_id[f"{lang}-rude"], by_id[f"{lang}-kind"]
        assert _score(rude, "toxicity") > _score(kind, "toxicity") + 0.3, lang
        assert rude.flagged and not kind.flagged, lang
    assert response.timings.tokens > 0


def test_one_policy_serves_both_models_with_their_own_thresholds(client: WachtClient) -> None:
    response = client.moderate(MIXED)
    by_id = {r.id: r for r in response.results}
    en = {c.category: c.review_threshold for c in by_id["en-rude"].categories}
    de = {c.category: c.review_threshold for c in by_id["de-rude"].categories}
    assert set(en) == set(de) and "toxicity" in en
    assert any(en[k] != de[k] for k in en), "each model keeps its calibrated thresholds"
    assert response.policy == "default"


def test_pinned_model_is_not_routed_but_languages_are_reported(client: WachtClient) -> None:
    response = client.moderate(MIXED, model=DE_MODEL)
    assert {r.model.name for r in response.results} == {DE_MODEL}
    assert response.model.name == DE_MODEL
    assert [r.language for r in response.results] == ["en", "de", "en", "de"]


def test_language_hint_replaces_detection(client: WachtClient) -> None:
    response = client.moderate({"a": MIXED["en-kind"]}, language="de")
    (result,) = response.results
    assert result.language == "de" and result.language_confidence == 1.0
    assert result.model.name == DE_MODEL


def test_bad_language_hint_names_the_field(client: WachtClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate({"a": "hallo"}, language="not a language!")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for d in error_details(caught.value)
              for v in getattr(d, "field_violations", [])]
    assert "language" in fields


def test_analyze_routes_and_reports_model_and_language(client: WachtClient) -> None:
    response = client.analyze(MIXED)
    assert [r.id for r in response.results] == list(MIXED)
    assert [r.model.name for r in response.results] == [EN_MODEL, DE_MODEL, EN_MODEL, DE_MODEL]
    assert [r.language for r in response.results] == ["en", "de", "en", "de"]
    for result in response.results:
        assert {t.task for t in result.tasks} == {"sentiment", "toxicity"}


def test_stream_routes_each_message(client: WachtClient) -> None:
    replies = sorted(client.stream(list(MIXED.values())), key=lambda r: r.sequence)
    results = [r.response.results[0] for r in replies]
    assert [r.language for r in results] == ["en", "de", "en", "de"]
    assert [r.model.name for r in results] == [EN_MODEL, DE_MODEL, EN_MODEL, DE_MODEL]


def test_german_evidence_sentence_is_german(client: WachtClient) -> None:
    response = client.moderate({"x": MIXED["de-rude"]}, explanation="evidence")
    explanation = response.results[0].explanation
    assert explanation.language == "de"
    assert "Toxizität" in explanation.text or "Beleidigung" in explanation.text
    assert "threshold" not in explanation.text


def test_models_lists_both_and_the_routing_table(client: WachtClient) -> None:
    listed = client.list_models()
    names = [m.name for m in listed.models]
    assert names[:2] == [EN_MODEL, DE_MODEL]
    routing = listed.routing
    assert routing.languages["en"] == EN_MODEL
    assert routing.languages["de"] == DE_MODEL
    assert routing.languages["fr"] == DE_MODEL
    assert routing.fallback == EN_MODEL
    assert "lid.176" in routing.detector
    info = client.model_info(DE_MODEL)
    assert "de" in info.languages and "en" in info.languages
