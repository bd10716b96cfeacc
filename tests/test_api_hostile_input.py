"""Errors that always arrive as themselves: oversize echoed values, invalid UTF-8 anywhere,
and nothing a client chose (text, id, name) in the server's logs or metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from api_support import require_model, start_subprocess, wait_for
from google.rpc import error_details_pb2

from wacht.client import WachtClient, error_details, error_status, moderate_request
from wacht.v1 import analysis_pb2, common_pb2, models_pb2, moderation_pb2

BIG = 1 << 20  # a 1 MiB name: far past any metadata limit if echoed


def _name(size: int = BIG) -> str:
    return "n" * (size - 9) + "ÄÖÜ" + "end"  # multi-byte characters: cut on a boundary


def _violations(error: grpc.RpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    bad = [d for d in error_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    assert bad, f"no BadRequest in {error.code()}: {error.details()[:200]}"
    return list(bad[0].field_violations)


def _trailer_bytes(error: grpc.RpcError) -> int:
    return sum(len(k) + len(v) for k, v in error.trailing_metadata() or ())


def _texts(*items: tuple[str, str]) -> list[common_pb2.TextInput]:
    return [common_pb2.TextInput(id=i, text=t) for i, t in items]


def _moderate(c: WachtClient, **fields: Any) -> Any:
    fields.setdefault("texts", _texts(("a", "hello")))
    return c.moderate_raw(moderation_pb2.ModerateRequest(**fields), timeout=30)


def _override(c: WachtClient, key: str) -> Any:
    request = moderation_pb2.ModerateRequest(texts=_texts(("a", "hello")))
    request.threshold_overrides[key].review = 0.5
    return c.moderate_raw(request, timeout=30)


def _analyze(c: WachtClient, **fields: Any) -> Any:
    fields.setdefault("texts", _texts(("a", "hello")))
    return c.analysis.Analyze(analysis_pb2.AnalyzeRequest(**fields), timeout=30)


def _explain(c: WachtClient, **fields: Any) -> Any:
    fields.setdefault("text", common_pb2.TextInput(id="a", text="hello"))
    return list(c.moderation.Explain(moderation_pb2.ExplainRequest(**fields), timeout=30))


def _explain_override(c: WachtClient, key: str) -> Any:
    request = moderation_pb2.ExplainRequest(text=common_pb2.TextInput(text="hello"))
    request.threshold_overrides[key].block = 0.5
    return list(c.moderation.Explain(request, timeout=30))


# (case, call with the oversize value, field path the violation must name)
OVERSIZE: list[tuple[str, Callable[[WachtClient, str], Any], str]] = [
    ("Moderate.policy", lambda c, n: _moderate(c, policy=n), "policy"),
    ("Moderate.model", lambda c, n: _moderate(c, model=n), "model"),
    ("Moderate.categories", lambda c, n: _moderate(c, categories=["hate", n]), "categories[1]"),
    ("Moderate.override key", _override, "threshold_overrides["),
    (
        "Moderate.duplicate id",
        lambda c, n: _moderate(c, texts=_texts((n, "a"), (n, "b"))),
        "texts[1].id",
    ),
    ("Analyze.tasks", lambda c, n: _analyze(c, tasks=[n]), "tasks[0]"),
    ("Analyze.model", lambda c, n: _analyze(c, model=n), "model"),
    (
        "Analyze.duplicate id",
        lambda c, n: _analyze(c, texts=_texts((n, "a"), (n, "b"))),
        "texts[1].id",
    ),
    ("Explain.policy", lambda c, n: _explain(c, policy=n), "policy"),
    ("Explain.model", lambda c, n: _explain(c, model=n), "model"),
    ("Explain.override key", _explain_override, "threshold_overrides["),
    (
        "GetModelInfo.name",
        lambda c, n: c.models.GetModelInfo(models_pb2.GetModelInfoRequest(name=n), timeout=30),
        "name",
    ),
]


@pytest.mark.parametrize(("case", "call", "field"), OVERSIZE, ids=[c[0] for c in OVERSIZE])
def test_oversize_name_gets_its_invalid_argument(
    client: WachtClient, case: str, call: Callable[[WachtClient, str], Any], field: str
) -> None:
    """A 1 MiB name is quoted cut, with its length: the error fits the client's 16 KiB
    metadata limit and arrives as INVALID_ARGUMENT naming the field."""
    name = _name()
    with pytest.raises(grpc.RpcError) as caught:
        call(client, name)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, error.details()[:300])
    violations = _violations(error)
    assert any(v.field.startswith(field) for v in violations), [v.field for v in violations]
    described = " ".join(v.description for v in violations)
    assert f"({len(name.encode())} bytes)" in described or field.startswith("threshold")
    assert len(error.details().encode()) <= 1024
    assert _trailer_bytes(error) < 8 * 1024


def test_oversize_name_in_a_stream_message(client: WachtClient) -> None:
    name = _name()
    messages = [["fine"], moderate_request(["x"], policy=name), ["fine"]]
    replies = list(client.stream(messages, timeout=60))
    assert [r.WhichOneof("outcome") for r in replies] == ["response", "error", "response"]
    error = replies[1].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(error.SerializeToString()) < 4096
    assert f"({len(name.encode())} bytes)" in error.message


def test_many_violations_are_bounded(client: WachtClient) -> None:
    """256 texts sharing one long id and 64 long unknown categories: over 300 violations,
    one bounded error that says how many there were."""
    name = _name(8192)
    request = moderation_pb2.ModerateRequest(
        texts=_texts(*[(name, "x" * 100)] * 256), categories=[name] * 64
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.moderate_raw(request, timeout=60)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 0 < len(_violations(error)) <= 16
    assert "more" in error.details() and _trailer_bytes(error) < 8 * 1024


MARK = "PLACEHOLDER-7f3a"  # replaced by invalid UTF-8 in the serialized request


def _corrupt(message: Any) -> bytes:
    """`message` serialized with the marker's first byte made invalid UTF-8 (0xff)."""
    raw = message.SerializeToString()
    assert raw.count(MARK.encode()) == 1
    return raw.replace(MARK.encode(), b"\xff" + MARK.encode()[1:])


def _moderate_with(**fields: Any) -> moderation_pb2.ModerateRequest:
    fields.setdefault("texts", _texts(("a", "hello"), ("b", "world")))
    return moderation_pb2.ModerateRequest(**fields)


def _with_override(request: Any, key: str) -> Any:
    request.threshold_overrides[key].review = 0.5
    return request


UTF8: list[tuple[str, str, Any, str]] = [
    ("Moderate", "texts[1].text", _moderate_with(texts=_texts(("a", "ok"), ("b", MARK))), ""),
    ("Moderate", "texts[0].id", _moderate_with(texts=_texts((MARK, "ok"))), ""),
    ("Moderate", "policy", _moderate_with(policy=MARK), ""),
    ("Moderate", "model", _moderate_with(model=MARK), ""),
    ("Moderate", "language", _moderate_with(language=MARK), ""),
    ("Moderate", "categories[1]", _moderate_with(categories=["hate", MARK]), ""),
    ("Moderate", "threshold_overrides", _with_override(_moderate_with(), MARK), ""),
    ("Analyze", "tasks[0]", analysis_pb2.AnalyzeRequest(texts=_texts(("a", "x")), tasks=[MARK]),
     ""),
    ("Analyze", "texts[0].text", analysis_pb2.AnalyzeRequest(texts=_texts(("a", MARK))), ""),
    ("Explain", "text.text", moderation_pb2.ExplainRequest(
        text=common_pb2.TextInput(text=MARK)), ""),
    ("Explain", "policy", moderation_pb2.ExplainRequest(
        text=common_pb2.TextInput(text="x"), policy=MARK), ""),
    ("GetModelInfo", "name", models_pb2.GetModelInfoRequest(name=MARK), ""),
]
SERVICES = {"Moderate": "Moderation", "Analyze": "Analysis", "Explain": "Moderation",
            "GetModelInfo": "Models"}


@pytest.mark.parametrize(("method", "field", "message", "_"), UTF8,
                         ids=[f"{m}.{f}" for m, f, _, _ in UTF8])
def test_invalid_utf8_names_its_field(
    client: WachtClient, method: str, field: str, message: Any, _: str
) -> None:
    path = f"/wacht.v1.{SERVICES[method]}/{method}"
    if method == "Explain":
        call: Any = client.channel.unary_stream(path, request_serializer=lambda b: b)
        invoke: Callable[[], Any] = lambda: list(call(_corrupt(message), timeout=30))  # noqa: E731
    else:
        call = client.channel.unary_unary(path, request_serializer=lambda b: b)
        invoke = lambda: call(_corrupt(message), timeout=30)  # noqa: E731
    with pytest.raises(grpc.RpcError) as caught:
        invoke()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(caught.value)
    assert [v.field for v in violations] == [field]
    assert "UTF-8" in violations[0].description


def test_invalid_utf8_in_a_stream_names_its_field(client: WachtClient) -> None:
    good = moderation_pb2.ModerateStreamRequest(
        message_id="ok", request=moderate_request(["fine"])
    ).SerializeToString()
    bad = _corrupt(moderation_pb2.ModerateStreamRequest(
        message_id="m", request=_moderate_with(texts=_texts(("a", "x"), ("b", MARK)))
    ))
    call = client.channel.stream_stream(
        "/wacht.v1.Moderation/ModerateStream",
        request_serializer=lambda b: b,
        response_deserializer=moderation_pb2.ModerateStreamResponse.FromString,
    )
    replies = list(call(iter([good, bad, good]), timeout=30))
    assert [r.WhichOneof("outcome") for r in replies] == ["response", "error", "response"]
    status = replies[1].error
    bad_request = [d for d in error_details(status) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad_request[0].field_violations] == ["request.texts[1].text"]


def test_truncated_message_is_invalid_argument(client: WachtClient) -> None:
    call = client.channel.unary_unary("/wacht.v1.Moderation/Moderate",
                                      request_serializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\x0a\x40abc", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = error_status(caught.value)
    assert status is not None and "texts" in status.message


# --- the canary: nothing a client chose reaches the logs or the metrics ------------------

CANARY = "canary-5be1c0ffee"


def _canary_calls(c: WachtClient) -> Iterator[str]:
    """Every RPC, on its success and error paths, with the canary in texts, ids and names;
    yields a label per call so a failure says which one leaked."""
    k = CANARY
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("moderate ok", lambda: c.moderate({k: f"{k} you idiot"}, explanation="evidence",
                                           evidence_spans=True, raw_scores=True)),
        ("moderate policy", lambda: _moderate(c, policy=k)),
        ("moderate model", lambda: _moderate(c, model=k)),
        ("moderate category", lambda: _moderate(c, categories=[k])),
        ("moderate override", lambda: _override(c, k)),
        ("moderate duplicate id", lambda: _moderate(c, texts=_texts((k, "a"), (k, "b")))),
        ("moderate oversize text", lambda: _moderate(c, texts=_texts((k, k * 7000)))),
        ("moderate reject", lambda: _moderate(c, texts=_texts((k, f"{k} " * 600)),
                                             truncation=common_pb2.TRUNCATION_REJECT)),
        ("analyze ok", lambda: c.analyze({k: k})),
        ("analyze task", lambda: _analyze(c, tasks=[k])),
        ("analyze model", lambda: _analyze(c, model=k)),
        ("explain ok", lambda: _explain(c, text=common_pb2.TextInput(id=k, text=f"{k} idiot"))),
        ("explain policy", lambda: _explain(c, policy=k)),
        ("explain override", lambda: _explain_override(c, k)),
        ("model info", lambda: c.model_info(k)),
        ("stream", lambda: list(c.stream([{k: k}, moderate_request([k], policy=k),
                                          moderate_request({k: k}, model=k)], timeout=30))),
    ]
    for label, call in variants:
        try:
            call()
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,), (label, exc.code())
        yield label
    # x-request-id is kept only in its safe shape: free text is replaced
    c.moderation.Moderate(moderate_request(["hi"]), timeout=30,
                          metadata=(("x-request-id", f"{k} with spaces"),))
    yield "request id"


def test_canary_never_reaches_logs_or_metrics(tmp_path: Path) -> None:
    require_model()
    log_file = tmp_path / "server.log"
    metrics_port = _free_port()
    process, port = start_subprocess(
        {"WACHT_LOG__LEVEL": "debug", "WACHT_METRICS_PORT": str(metrics_port)}, log_file
    )
    try:
        with WachtClient(f"127.0.0.1:{port}", timeout=60) as c:
            wait_for(lambda: _serving(c), 90)
            labels = list(_canary_calls(c))
            assert len(labels) == 17
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                metrics = r.read().decode()
    finally:
        process.terminate()
        process.wait(30)
    log = log_file.read_text()
    assert log.count('"call failed"') >= 10  # the error paths were logged...
    assert CANARY not in log  # ...without the canary
    assert CANARY not in metrics
    assert "request_id" in log and "with spaces" not in log
    for line in log.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            assert len(line) < 4096, event.get("event")


def _serving(c: WachtClient) -> bool:
    try:
        return c.health(timeout=2) == 1
    except grpc.RpcError:
        return False


def _free_port() -> int:
    from api_support import free_port

    return free_port()


def test_request_id_shape() -> None:
    from wacht.service.api.calls import REQUEST_ID

    assert REQUEST_ID.fullmatch("req-1:a.b_C")
    assert not REQUEST_ID.fullmatch("has space") and not REQUEST_ID.fullmatch("x" * 65)
