"""Property-based fuzz of every RPC against the real server: any request, well-formed or
byte-mutated, gets one of the documented codes (never UNKNOWN or INTERNAL), and the
server is alive afterwards.

Seeded (derandomize) and bounded: about 2,300 examples in CI. WACHT_FUZZ_SCALE=10 runs ten
times as many (outside CI).
"""

from __future__ import annotations

import math
import os
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wacht.client import WachtClient
from wacht.v1 import analysis_pb2, common_pb2, models_pb2, moderation_pb2

pytestmark = pytest.mark.slow
SCALE = float(os.environ.get("WACHT_FUZZ_SCALE", "1"))
SCORING_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
LOOKUP_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# Names: known ones, near misses and junk (any Unicode, long, control characters).
KNOWN = ["", "default", "strict", "lenient", "minilm-moderation", "hate", "insult", "threat",
         "toxicity", "sentiment", "de", "en", "spam"]
names = st.one_of(st.sampled_from(KNOWN), st.text(max_size=40),
                  st.text(alphabet="ab[]'\"\\", max_size=8))
plain_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300
)
texts = st.lists(
    st.builds(common_pb2.TextInput, id=st.one_of(st.just(""), names), text=plain_text),
    max_size=6,
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, 0.5, 1.0, -0.1, 1.1]))
enum_value = st.integers(min_value=-3, max_value=12)
# mostly valid, so that the OK paths are fuzzed as well as the errors
optional = st.one_of(st.just(""), st.just(""), st.just(""), names)
mostly_false = st.one_of(st.just(False), st.just(False), st.booleans())
truncations = st.one_of(st.integers(0, 3), st.integers(0, 3), enum_value)
CODES: dict[str, list[grpc.StatusCode]] = {}


@st.composite
def overrides(draw: Any) -> dict[str, moderation_pb2.ThresholdOverride]:
    out = {}
    for key in draw(st.lists(names, max_size=3)):
        item = moderation_pb2.ThresholdOverride()
        if draw(st.booleans()):
            item.review = draw(floats)
        if draw(st.booleans()):
            item.block = draw(floats)
        if draw(st.booleans()):
            item.enabled = draw(st.booleans())
        out[key] = item
    return out


@st.composite
def moderate_requests(draw: Any) -> moderation_pb2.ModerateRequest:
    request = moderation_pb2.ModerateRequest(
        texts=draw(texts),
        model=draw(optional),
        analyses=draw(st.lists(st.one_of(st.integers(1, 2), enum_value), max_size=2)),
        categories=draw(st.one_of(st.just([]), st.lists(names, max_size=3))),
        policy=draw(optional),
        explanation=draw(st.sampled_from([0, 1, 2, 9])),  # 3 = generative: not in the CI loop
        evidence_spans=draw(st.booleans()),
        suggest_rewrite=draw(mostly_false),
        raw_scores=draw(st.booleans()),
        truncation=draw(truncations),
        language=draw(optional),
    )
    for key, value in draw(st.one_of(st.just({}), overrides())).items():
        request.threshold_overrides[key].CopyFrom(value)
    return request


def _code(call: Any) -> grpc.StatusCode:
    try:
        result = call()
        if not hasattr(result, "SerializeToString"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer[: max(0, len(buffer) - cut)])


@fuzz_settings(600)
@given(request=moderate_requests())
def test_fuzz_moderate(client: WachtClient, request: moderation_pb2.ModerateRequest) -> None:
    code = _code(lambda: client.moderate_raw(request, timeout=20))
    CODES.setdefault("Moderate", []).append(code)
    assert code in SCORING_CODES, (code, request)


@fuzz_settings(300)
@given(texts=texts, model=optional, tasks=st.one_of(st.just([]), st.lists(names, max_size=3)),
       truncation=truncations, language=optional)
def test_fuzz_analyze(client: WachtClient, texts: Any, model: str, tasks: list[str],
                      truncation: int, language: str) -> None:
    request = analysis_pb2.AnalyzeRequest(texts=texts, model=model, tasks=tasks,
                                          truncation=truncation, language=language)
    code = _code(lambda: client.analysis.Analyze(request, timeout=20))
    CODES.setdefault("Analyze", []).append(code)
    assert code in SCORING_CODES, (code, request)


@fuzz_settings(150)
@given(text=st.builds(common_pb2.TextInput, id=optional, text=plain_text), model=optional,
       policy=optional, extra=st.one_of(st.just({}), overrides()), language=optional)
def test_fuzz_explain(client: WachtClient, text: Any, model: str, policy: str, extra: Any,
                      language: str) -> None:
    request = moderation_pb2.ExplainRequest(text=text, model=model, policy=policy,
                                            language=language)
    for key, value in extra.items():
        request.threshold_overrides[key].CopyFrom(value)
    code = _code(lambda: client.moderation.Explain(request, timeout=30))
    assert code in SCORING_CODES, (code, request)


@fuzz_settings(200)
@given(name=st.one_of(names, st.text(min_size=300, max_size=3000)))
def test_fuzz_model_info(client: WachtClient, name: str) -> None:
    code = _code(lambda: client.models.GetModelInfo(models_pb2.GetModelInfoRequest(name=name),
                                                    timeout=20))
    assert code in LOOKUP_CODES, code


@fuzz_settings(100)
@given(messages=st.lists(st.tuples(names, moderate_requests()), max_size=5))
def test_fuzz_stream(client: WachtClient, messages: list[tuple[str, Any]]) -> None:
    stream = [moderation_pb2.ModerateStreamRequest(message_id=m, request=r)
              for m, r in messages]
    replies = list(client.moderation.ModerateStream(iter(stream), timeout=60))
    assert len(replies) == len(stream)
    for reply in replies:
        if reply.WhichOneof("outcome") == "error":
            assert grpc.StatusCode.INVALID_ARGUMENT.value[0] <= reply.error.code  # not OK
            assert reply.error.code in {c.value[0] for c in SCORING_CODES}


RAW_METHODS = [
    ("/wacht.v1.Moderation/Moderate", "unary", SCORING_CODES),
    ("/wacht.v1.Analysis/Analyze", "unary", SCORING_CODES),
    ("/wacht.v1.Models/GetModelInfo", "unary", LOOKUP_CODES),
    ("/wacht.v1.Models/ListModels", "unary", LOOKUP_CODES),
    ("/wacht.v1.Moderation/ListPolicies", "unary", LOOKUP_CODES),
    ("/wacht.v1.Moderation/ListCategories", "unary", LOOKUP_CODES),
    ("/wacht.v1.Moderation/Explain", "server_stream", SCORING_CODES),
    ("/wacht.v1.Moderation/ModerateStream", "bidi", SCORING_CODES),
]
SEED = moderation_pb2.ModerateRequest(
    texts=[common_pb2.TextInput(id="a", text="you idiot"), common_pb2.TextInput(text="hi")],
    policy="default", categories=["insult"], language="en",
).SerializeToString()


@pytest.mark.parametrize(("path", "kind", "codes"), RAW_METHODS, ids=[m[0] for m in RAW_METHODS])
def test_fuzz_mutated_bytes(client: WachtClient, path: str, kind: str, codes: set) -> None:
    """Byte-mutated requests (flipped bytes, cut short) to every method."""

    @fuzz_settings(120)
    @given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
           cut=st.integers(0, 8))
    def run(edits: list[tuple[int, int]], cut: int) -> None:
        data = _mutate(SEED, edits, cut)
        if kind == "unary":
            call = client.channel.unary_unary(path, request_serializer=lambda b: b)
            code = _code(lambda: call(data, timeout=20))
        elif kind == "server_stream":
            stream_call = client.channel.unary_stream(path, request_serializer=lambda b: b)
            code = _code(lambda: stream_call(data, timeout=30))
        else:
            bidi = client.channel.stream_stream(path, request_serializer=lambda b: b)
            framed = b"\x12" + _varint(len(data)) + data  # as ModerateStreamRequest.request
            code = _code(lambda: bidi(iter([_mutate(framed, edits[:2], 0)]), timeout=30))
        assert code in codes, (code, data)

    run()
    assert client.moderate(["alive"], timeout=20).results[0].id == "0"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_server_alive_after_fuzz(client: WachtClient) -> None:
    assert client.health(timeout=10) == 1
    for method, codes in CODES.items():  # the fuzz reached the scoring paths, not only errors
        ok = sum(code == grpc.StatusCode.OK for code in codes)
        assert ok >= len(codes) // 10, (method, ok, len(codes))
    reply = client.moderate(["after the fuzz"], timeout=20)
    assert reply.results[0].id == "0" and not math.isnan(reply.results[0].categories[0].score)
