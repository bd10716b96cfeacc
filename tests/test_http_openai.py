"""OpenAI-compatible /v1/moderations, called by the official `openai` SDK, unmodified, against
the real server; scores are the ones gRPC's Moderate gives for the same texts."""

from __future__ import annotations

import pytest
from api_support import ServerThread
from http_support import call

from wacht.client import WachtClient
from wacht.service.http.openai_api import OPENAI_CATEGORIES

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def sdk(wacht_server: ServerThread):  # noqa: ANN201
    return openai.OpenAI(base_url=wacht_server.http_url + "/v1", api_key="sk-test",
                         max_retries=0, timeout=60)


def test_string_input(sdk, client: WachtClient) -> None:  # noqa: ANN001
    reply = sdk.moderations.create(input="you are a complete idiot")
    assert reply.id.startswith("modr-")
    (result,) = reply.results
    expected = client.moderate(["you are a complete idiot"]).results[0]
    assert result.flagged is expected.flagged is True
    scores = {c.category: c.score for c in expected.categories}
    assert result.category_scores.harassment == pytest.approx(scores["insult"], abs=1e-6)
    assert result.category_scores.hate == pytest.approx(scores["hate"], abs=1e-6)
    assert result.categories.harassment is True
    dumped = result.model_dump(by_alias=True)
    assert set(dumped["categories"]) == set(OPENAI_CATEGORIES)
    assert dumped["category_scores"]["self-harm"] == 0.0  # not scored by the model
    assert dumped["categories"]["violence/graphic"] is False


def test_list_input_and_model_names(sdk, wacht_server: ServerThread) -> None:  # noqa: ANN001
    texts = ["thanks, that was helpful", "you are a complete idiot", {"type": "text",
                                                                      "text": "nice"}]
    for model in ("omni-moderation-latest", "text-moderation-stable", "minilm-moderation"):
        reply = sdk.moderations.create(input=texts, model=model)
        assert reply.model == model
        assert [r.flagged for r in reply.results] == [False, True, False]


def test_unknown_model_is_openai_404(sdk) -> None:  # noqa: ANN001
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.moderations.create(input="hello", model="gpt-9-moderation")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "model"
    assert "gpt-9-moderation" in caught.value.message


def test_bad_inputs_are_openai_400(sdk, wacht_server: ServerThread) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.moderations.create(input=[])
    assert caught.value.param == "input"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.moderations.create(input=["ok", "x" * 70000])
    assert caught.value.param == "input[1]"
    assert "UTF-8 bytes" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.moderations.create(input=[{"type": "image_url", "image_url": {"url": "x"}}])
    assert caught.value.param == "input[0]"
    url = wacht_server.http_url + "/v1/moderations"
    for body, param in ((b"{oops", None), ({"input": 3}, "input"),
                        ({"input": "x", "temperature": 1}, "temperature")):
        status, _, got = call(url, body)
        assert status == 400, got
        assert got["error"]["type"] == "invalid_request_error"
        assert got["error"]["param"] == param
    limit = wacht_server.server._max_message_bytes()
    status, _, got = call(url, b'{"input": "' + b"a" * limit + b'"}')
    assert status == 413 and got["error"]["type"] == "invalid_request_error"
