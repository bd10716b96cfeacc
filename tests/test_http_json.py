"""Wacht's own API as JSON on the HTTP listener of the real server: same answers and the same
field violations as gRPC, precise 4xx for bad bodies, health for load balancers."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import pytest
from api_support import ServerThread, make_config, metric_value
from google.protobuf import json_format
from google.rpc import error_details_pb2
from http_support import call, violations
from test_api_errors import BAD_MODERATE

from wacht.client import WachtClient, error_details
from wacht.v1 import moderation_pb2

TEXTS = ["you are a complete idiot", "thanks, that was helpful", "what a load of crap"]


def _grpc_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    bad = [d for d in error_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    return [(v.field, v.description) for v in bad[0].field_violations] if bad else []


def test_moderate_json_matches_grpc(wacht_server: ServerThread, client: WachtClient) -> None:
    body = {"texts": [{"id": f"t{i}", "text": t} for i, t in enumerate(TEXTS)],
            "evidenceSpans": True, "policy": "strict"}
    status, headers, got = call(wacht_server.http_url + "/wacht/v1/moderate", body,
                                headers={"X-Request-Id": "req-json-1"})
    assert status == 200, got
    assert headers["X-Request-Id"] == "req-json-1"
    assert got["requestId"] == "req-json-1"
    expected = client.moderate_raw(json_format.ParseDict(body, moderation_pb2.ModerateRequest()))
    assert [r["id"] for r in got["results"]] == ["t0", "t1", "t2"]
    for mine, theirs in zip(got["results"], expected.results, strict=True):
        assert mine["decision"] == moderation_pb2.Decision.Name(theirs.decision)
        scores = {c["category"]: c["score"] for c in mine["categories"]}
        assert scores == pytest.approx({c.category: c.score for c in theirs.categories}, abs=1e-6)
        assert len(mine["spans"]) == len(theirs.spans)
    assert got["policy"] == "strict"
    assert got["results"][0]["decision"] != "DECISION_ALLOW"


@pytest.mark.parametrize(("case", "fields", "field"), BAD_MODERATE,
                         ids=[c[0] for c in BAD_MODERATE])
def test_bad_request_same_violations_as_grpc(
    wacht_server: ServerThread, client: WachtClient, case: str, fields: dict, field: str
) -> None:
    request = moderation_pb2.ModerateRequest(**fields)
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate_raw(request)
    body = json_format.MessageToDict(request)
    status, _, got = call(wacht_server.http_url + "/wacht/v1/moderate", body)
    assert status == 400, case
    assert got["error"]["status"] == "INVALID_ARGUMENT"
    assert got["error"]["code"] == 400
    assert violations(got) == _grpc_violations(caught.value), case
    assert field in [f for f, _ in violations(got)]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"texts": "hello"}, "texts", "expected an array"),
        ({"texts": [{"text": 5}]}, "texts[0].text", "expected a string"),
        ({"texts": [{"txt": "x"}]}, "texts[0].txt", "unknown field"),
        ({"texts": [{"text": "x"}], "explanation": "LOUD"}, "explanation", "unknown"),
        ({"texts": [{"text": "x"}], "evidenceSpans": "yes"}, "evidence_spans", "true or false"),
        ({"texts": [{"text": "x"}], "thresholdOverrides": {"hate": {"review": "high"}}},
         "threshold_overrides[hate].review", "expected a number"),
        ([1, 2], "", "expected an object"),
    ],
)
def test_wrong_types_name_the_field_without_echoing(
    wacht_server: ServerThread, body: object, field: str, words: str
) -> None:
    status, _, got = call(wacht_server.http_url + "/wacht/v1/moderate", body)
    assert status == 400, got
    found = violations(got)
    assert found and found[0][0] == field, found
    assert words in found[0][1]
    assert "hello" not in json.dumps(got) and "LOUD" not in json.dumps(got)


def test_malformed_json_and_oversized_body(wacht_server: ServerThread) -> None:
    url = wacht_server.http_url + "/wacht/v1/moderate"
    status, _, got = call(url, b'{"texts": [')
    assert status == 400 and "not valid JSON" in got["error"]["message"]
    status, _, got = call(url, b"\xff\xfe{}")
    assert status == 400 and "not UTF-8" in got["error"]["message"]
    limit = wacht_server.server._max_message_bytes()
    status, _, got = call(url, b'{"texts": [{"text": "' + b"a" * limit + b'"}]}')
    assert status == 413, got
    assert got["error"]["status"] == "INVALID_ARGUMENT"
    assert "larger than" in got["error"]["message"]


def test_read_only_methods_and_connect_paths(wacht_server: ServerThread) -> None:
    base = wacht_server.http_url
    status, _, policies = call(base + "/wacht/v1/policies")
    assert status == 200
    assert {p["name"] for p in policies["policies"]} >= {"default", "strict", "lenient"}
    status, _, categories = call(base + "/wacht/v1/categories")
    assert status == 200 and "toxicity" in {c["name"] for c in categories["categories"]}
    status, _, models = call(base + "/wacht/v1/models")
    name = models["models"][0]["name"]
    status, _, info = call(f"{base}/wacht/v1/models/{name}")
    assert status == 200 and info["name"] == name and info["isDefault"] is True
    status, _, missing = call(base + "/wacht/v1/models/nope")
    assert status == 400 and violations(missing)[0][0] == "name"
    status, _, same = call(base + "/wacht.v1.Models/GetModelInfo", {"name": name})
    assert status == 200 and same["name"] == name
    status, _, analyzed = call(base + "/wacht.v1.Analysis/Analyze",
                               {"texts": [{"text": "hello"}], "tasks": ["sentiment"]})
    assert status == 200 and [t["task"] for t in analyzed["results"][0]["tasks"]] == ["sentiment"]
    status, _, bad_task = call(base + "/wacht/v1/analyze",
                               {"texts": [{"text": "hello"}], "tasks": ["nope"]})
    assert status == 400 and violations(bad_task)[0][0] == "tasks[0]"
    status, headers, _ = call(base + "/wacht/v1/moderate", method="GET")
    assert status == 405 and "POST" in headers.get("Allow", "")
    status, _, unknown = call(base + "/wacht/v2/moderate", {})
    assert status == 404 and unknown["error"]["status"] == "NOT_FOUND"


def test_explain_streams_json_lines(wacht_server: ServerThread) -> None:
    status, headers, text = call(wacht_server.http_url + "/wacht/v1/explain",
                                 {"text": {"text": "you are a complete idiot"}})
    assert status == 200
    assert headers["Content-Type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in text.splitlines()]
    assert "moderation" in events[0] and "final" in events[-1]
    assert events[-1]["final"]["text"]
    status, _, got = call(wacht_server.http_url + "/wacht/v1/explain", {"text": {}, "x": 1})
    assert status == 400 and violations(got)[0][0] == "x"


def test_health_paths(wacht_server: ServerThread) -> None:
    base = wacht_server.http_url
    assert call(base + "/healthz")[0:3:2] == (200, {"status": "SERVING"})
    assert call(base + "/readyz?service=wacht.v1.Moderation")[0] == 200
    assert call(base + "/healthz?service=wacht.v1.Nope")[0] == 404
    assert call(base + "/livez")[0] == 200


def test_health_not_serving_before_models_load() -> None:
    server = ServerThread(make_config(http={"address": "127.0.0.1:0"}), load_models=False)
    try:
        status, _, got = call(server.http_url + "/healthz")
        assert (status, got["status"]) == (503, "NOT_SERVING")
        assert call(server.http_url + "/livez")[0] == 200
        status, headers, got = call(server.http_url + "/wacht/v1/moderate",
                                    {"texts": [{"text": "x"}]})
        assert status == 503 and got["error"]["status"] == "UNAVAILABLE"
        status, _, got = call(server.http_url + "/wacht/v1/categories")
        assert status == 200  # needs no model
    finally:
        server.stop()


def test_http_calls_are_counted_like_grpc(wacht_server: ServerThread) -> None:
    before = metric_value(wacht_server.metrics_text(), "wacht_requests_total",
                          method="http.Moderate", code="INVALID_ARGUMENT")
    call(wacht_server.http_url + "/wacht/v1/moderate", {"texts": []})
    after = metric_value(wacht_server.metrics_text(), "wacht_requests_total",
                         method="http.Moderate", code="INVALID_ARGUMENT")
    assert after == before + 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(wacht_server: ServerThread) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json",
         "-d", '{"texts":[{"text":"what a load of crap"}]}',
         wacht_server.http_url + "/wacht/v1/moderate"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    got = json.loads(out.stdout)
    assert got["results"][0]["categories"][0]["category"]
