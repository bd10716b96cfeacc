"""Perspective-compatible comments:analyze, called through Perspective's documented Python
sample (google-api-python-client's discovery.build), unmodified but for the URL."""

from __future__ import annotations

import json

import pytest
from api_support import ServerThread
from http_support import call, violations

from wacht.client import WachtClient
from wacht.service.http.perspective import sentences, utf16_offsets

discovery = pytest.importorskip("googleapiclient.discovery")
googleapiclient_errors = pytest.importorskip("googleapiclient.errors")


@pytest.fixture(scope="module")
def perspective(wacht_server: ServerThread):  # noqa: ANN201
    return discovery.build(
        "commentanalyzer",
        "v1alpha1",
        developerKey="test-key",
        discoveryServiceUrl=wacht_server.http_url + "/$discovery/rest?version=v1alpha1",
        static_discovery=False,
        cache_discovery=False,
    )


def test_documented_sample(perspective, client: WachtClient) -> None:  # noqa: ANN001
    analyze_request = {
        "comment": {"text": "you are a complete idiot"},
        "requestedAttributes": {"TOXICITY": {}, "INSULT": {}, "IDENTITY_ATTACK": {}},
        "doNotStore": True,
        "clientToken": "tok-7",
    }
    response = perspective.comments().analyze(body=analyze_request).execute()
    expected = {c.category: c.score for c in
                client.moderate(["you are a complete idiot"]).results[0].categories}
    scores = response["attributeScores"]
    assert set(scores) == {"TOXICITY", "INSULT", "IDENTITY_ATTACK"}
    assert scores["TOXICITY"]["summaryScore"]["type"] == "PROBABILITY"
    assert scores["TOXICITY"]["summaryScore"]["value"] == pytest.approx(expected["toxicity"],
                                                                         abs=1e-5)
    assert scores["IDENTITY_ATTACK"]["summaryScore"]["value"] == pytest.approx(
        expected["hate"], abs=1e-5)
    (span,) = scores["INSULT"]["spanScores"]
    assert (span["begin"], span["end"]) == (0, len("you are a complete idiot"))
    assert response["clientToken"] == "tok-7"
    assert response["detectedLanguages"] == ["en"]
    assert response["languages"] == ["en"]


def test_span_annotations_in_utf16_units(perspective) -> None:  # noqa: ANN001
    text = "Thanks for the answer 😀. You are a complete idiot!"
    response = perspective.comments().analyze(body={
        "comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}},
        "spanAnnotations": True, "languages": ["en"],
    }).execute()
    spans = response["attributeScores"]["TOXICITY"]["spanScores"]
    assert len(spans) == 2
    units = text.encode("utf-16-le")
    second = units[spans[1]["begin"] * 2:spans[1]["end"] * 2].decode("utf-16-le")
    assert second == "You are a complete idiot!"
    assert spans[1]["begin"] == text.index("You") + 1  # the emoji is two UTF-16 units
    assert spans[1]["score"]["value"] > spans[0]["score"]["value"]
    assert response["languages"] == ["en"]


def test_score_threshold_drops_low_attributes(perspective) -> None:  # noqa: ANN001
    response = perspective.comments().analyze(body={
        "comment": {"text": "thanks, that was helpful"},
        "requestedAttributes": {"TOXICITY": {"scoreThreshold": 0.9}, "INSULT": {}},
    }).execute()
    assert set(response["attributeScores"]) == {"INSULT"}


def test_unscorable_attribute_is_google_400(perspective) -> None:  # noqa: ANN001
    with pytest.raises(googleapiclient_errors.HttpError) as caught:
        perspective.comments().analyze(body={
            "comment": {"text": "hello"}, "requestedAttributes": {"THREAT": {}},
        }).execute()
    assert caught.value.resp.status == 400
    error = json.loads(caught.value.content)["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    assert error["message"] == "Attribute THREAT does not support request languages: en"
    assert error["details"][0]["errorType"] == "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE"
    assert violations({"error": error}) == [("requestedAttributes.THREAT", error["message"])]


def test_bad_bodies(wacht_server: ServerThread) -> None:
    url = wacht_server.http_url + "/v1alpha1/comments:analyze?key=k"
    cases = [
        ({"requestedAttributes": {"TOXICITY": {}}}, "comment.text"),
        ({"comment": {"text": "x"}}, "requestedAttributes"),
        ({"comment": {"text": "x"}, "requestedAttributes": {"BOGUS": {}}},
         "requestedAttributes.BOGUS"),
        ({"comment": {"text": "x"}, "requestedAttributes": {"TOXICITY": {"scoreThreshold": 2}}},
         "requestedAttributes.TOXICITY.scoreThreshold"),
        ({"comment": {"text": "x"}, "requestedAttributes": {"TOXICITY": {}}, "doNotStore": "y"},
         "doNotStore"),
        ({"comment": {"text": "x"}, "requestedAttributes": {"TOXICITY": {}}, "languages": ["??"]},
         "languages[0]"),
        ({"comment": {"text": "x" * 70000}, "requestedAttributes": {"TOXICITY": {}}},
         "comment.text"),
        ({"comment": {"text": "x"}, "requestedAttributes": {"TOXICITY": {}}, "extra": 1},
         "extra"),
    ]
    for body, field in cases:
        status, _, got = call(url, body)
        assert status == 400, (body, got)
        assert got["error"]["status"] == "INVALID_ARGUMENT"
        assert field in [f for f, _ in violations(got)], (field, got)
    status, _, got = call(url, b"not json")
    assert status == 400 and got["error"]["status"] == "INVALID_ARGUMENT"


def test_sentences_and_utf16_offsets() -> None:
    assert sentences("One. Two!\nThree") == [(0, 5), (5, 10), (10, 15)]
    assert sentences("") == [(0, 0)]
    assert len(sentences(". " * 100, limit=8)) == 8
    assert utf16_offsets("a😀b") == [0, 1, 3, 4]
