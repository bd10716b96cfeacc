"""Each bad input gets INVALID_ARGUMENT naming the field; deadlines; undecodable bytes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from api_support import ServerThread, metric_value, wait_for
from google.rpc import error_details_pb2

from wacht.client import WachtClient, error_details, moderate_request
from wacht.v1 import analysis_pb2, common_pb2, moderation_pb2


def _texts(*texts: str, ids: list[str] | None = None) -> list[common_pb2.TextInput]:
    ids = ids or [str(i) for i in range(len(texts))]
    return [common_pb2.TextInput(id=i, text=t) for i, t in zip(ids, texts, strict=True)]


def _fields(error: grpc.RpcError) -> list[str]:
    bad = [d for d in error_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    assert bad, f"no BadRequest detail in {error}"
    return [v.field for v in bad[0].field_violations]


BAD_MODERATE: list[tuple[str, dict[str, Any], str]] = [
    ("empty request", {}, "texts"),
    ("too many texts", {"texts": _texts(*["x"] * 257)}, "texts"),
    ("text over byte limit", {"texts": _texts("ok", "x" * 65537)}, "texts[1].text"),
    ("duplicate id", {"texts": _texts("a", "b", "c", ids=["p", "q", "p"])}, "texts[2].id"),
    ("index id collides", {"texts": _texts("a", "b", ids=["1", ""])}, "texts[1].id"),
    ("unknown model", {"texts": _texts("a"), "model": "gpt-9"}, "model"),
    ("unknown category", {"texts": _texts("a"), "categories": ["spam"]}, "categories[0]"),
    ("category not scored", {"texts": _texts("a"), "categories": ["threat"]}, "categories[0]"),
    ("unknown policy", {"texts": _texts("a"), "policy": "strictest"}, "policy"),
    ("unknown truncation", {"texts": _texts("a"), "truncation": 9}, "truncation"),
    ("unknown explanation", {"texts": _texts("a"), "explanation": 7}, "explanation"),
    ("unknown analysis", {"texts": _texts("a"), "analyses": [1, 5]}, "analyses[1]"),
    (
        "rewrite without generative",
        {"texts": _texts("a"), "suggest_rewrite": True},
        "suggest_rewrite",
    ),
]


@pytest.mark.parametrize(
    ("case", "fields", "field"), BAD_MODERATE, ids=[c[0] for c in BAD_MODERATE]
)
def test_bad_moderate_request(client: WachtClient, case: str, fields: dict, field: str) -> None:
    request = moderation_pb2.ModerateRequest(**fields)
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate_raw(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert field in _fields(caught.value), case


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"review": 1.5}, "threshold_overrides[hate].review"),
        ({"block": -0.1}, "threshold_overrides[hate].block"),
        ({"review": 0.9, "block": 0.2}, "threshold_overrides[hate].review"),
    ],
)
def test_bad_threshold_override(client: WachtClient, override: dict, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate(["a"], overrides={"hate": override})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(caught.value) == [field]


def test_override_of_unknown_category(client: WachtClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate(["a"], overrides={"spam": {"review": 0.5}})
    assert _fields(caught.value) == ["threshold_overrides[spam]"]


def test_all_violations_reported_at_once(client: WachtClient) -> None:
    request = moderate_request(["a", "b"], categories=["spam"], policy="nope")
    request.texts[1].id = "0"
    with pytest.raises(grpc.RpcError) as caught:
        client.moderation.Moderate(request, metadata=[("x-request-id", "bad-1")], timeout=30)
    assert set(_fields(caught.value)) == {"texts[1].id", "categories[0]", "policy"}
    assert ("x-request-id", "bad-1") in caught.value.trailing_metadata()


def test_analyze_bad_task_and_empty(client: WachtClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.analysis.Analyze(analysis_pb2.AnalyzeRequest(texts=_texts("a"), tasks=["emotion"]))
    assert _fields(caught.value) == ["tasks[0]"]
    with pytest.raises(grpc.RpcError) as caught:
        client.analysis.Analyze(analysis_pb2.AnalyzeRequest())
    assert _fields(caught.value) == ["texts"]


def test_explain_empty_text_id_ok_but_oversize_rejected(client: WachtClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(client.explain("x" * 70000))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(caught.value) == ["text.text"]


def test_truncation_reject(client: WachtClient) -> None:
    long_text = "word " * 2000
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate(["short", long_text], truncation="reject")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _fields(caught.value) == ["texts[1].text"]
    assert client.moderate(["short"], truncation="reject").results[0].windows == 1


def test_invalid_utf8_is_invalid_argument(client: WachtClient) -> None:
    # TextInput{id: "0", text: b"\xff\xfe"} inside ModerateRequest.texts, hand-encoded:
    # protobuf refuses to build a str field holding invalid UTF-8.
    text_input = b"\x0a\x010" + b"\x12\x02\xff\xfe"
    raw = b"\x0a" + bytes([len(text_input)]) + text_input
    call = client.channel.unary_unary(
        "/wacht.v1.Moderation/Moderate",
        request_serializer=lambda b: b,
        response_deserializer=moderation_pb2.ModerateResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(raw, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in caught.value.details()
    assert client.moderate(["still fine"]).results[0].id == "0"


def test_invalid_utf8_in_a_stream_is_reported_in_its_response(client: WachtClient) -> None:
    good = moderation_pb2.ModerateStreamRequest(
        message_id="ok", request=moderate_request(["fine"])
    ).SerializeToString()
    text_input = b"\x0a\x010" + b"\x12\x02\xff\xfe"
    request = b"\x0a" + bytes([len(text_input)]) + text_input
    bad = b"\x12" + bytes([len(request)]) + request  # ModerateStreamRequest.request
    call = client.channel.stream_stream(
        "/wacht.v1.Moderation/ModerateStream",
        request_serializer=lambda b: b,
        response_deserializer=moderation_pb2.ModerateStreamResponse.FromString,
    )
    replies = list(call(iter([good, bad, good]), timeout=30))
    assert [r.WhichOneof("outcome") for r in replies] == ["response", "error", "response"]
    assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_deadline_exceeded(client: WachtClient, wacht_server: ServerThread) -> None:
    def counted() -> tuple[float, float]:
        text = wacht_server.metrics_text()
        return (
            metric_value(text, "wacht_requests_total", method="Moderate", code="DEADLINE_EXCEEDED"),
            metric_value(text, "wacht_dropped_texts_total"),
        )

    expired_before, dropped_before = counted()
    texts = [f"text number {i} about a long walk in the park and other things" for i in range(256)]
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate(texts, timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: counted()[0] > expired_before, 10)  # the server saw it too
    wait_for(lambda: counted()[1] > dropped_before, 10)  # and dropped the queued work
    assert client.moderate(["after the deadline"], timeout=30).results[0].id == "0"
