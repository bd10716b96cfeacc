"""Language identification and the routing table (pure logic; the real lid.176 model)."""

from __future__ import annotations

import asyncio

import pytest

from wacht.service.moderation.routing import DETECT_INLINE_UP_TO, Route, Router, RoutingTable
from wacht.service.runtime.language import UNDETERMINED, LanguageDetector, clean


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


def test_first_model_in_config_order_gets_a_language() -> None:
    table = RoutingTable.build(
        [("english", ["en"]), ("multi", ["de", "en", "fr"])], fallback="english")
    assert table.model_for("en", 0.9) == "english"
    assert table.model_for("de", 0.9) == "multi"
    assert table.model_for("de-AT", 0.9) == "multi"
    assert table.model_for("sw", 0.9) == "english"  # nobody lists Swahili: fallback
    assert table.models() == ["english", "multi"]


def test_operator_overrides_and_confidence_floor() -> None:
    table = RoutingTable.build([("english", ["en"]), ("multi", ["de", "en"])],
                               overrides={"EN": "multi"}, fallback="english",
                               min_confidence=0.6)
    assert table.model_for("en", 0.9) == "multi"
    assert table.model_for("de", 0.59) == "english"
    assert table.model_for("de", 0.6) == "multi"


def test_clean_removes_what_is_not_language() -> None:
    assert clean("@user Das ist #super https://x.de/a   TOLL") == "das ist super toll"


def test_detects_english_and_german_short_texts(detector: LanguageDetector) -> None:
    found = detector.detect([
        "Thank you, that was really kind of you.",
        "Vielen Dank, das war wirklich nett von dir.",
        "Halt die Klappe!",
        "Ça va très bien, merci beaucoup.",
        "@user @user THIS IS SO STUPID",
    ])
    assert [d.language for d in found] == ["en", "de", "de", "fr", "en"]
    assert all(0.0 < d.confidence <= 1.0 for d in found)


def test_no_letters_is_undetermined(detector: LanguageDetector) -> None:
    found = detector.detect(["", "12345 !!!", "😀🙈", "@user https://example.com"])
    assert [(d.language, d.confidence) for d in found] == [(UNDETERMINED, 0.0)] * 4


def _router(detector: LanguageDetector | None) -> Router:
    table = RoutingTable.build([("english", ["en"]), ("multi", ["de", "en", "fr"])],
                               fallback="english")
    return Router(table, detector)


def test_router_routes_each_text_in_order(detector: LanguageDetector) -> None:
    texts = ["Good morning, how are you today?", "Guten Morgen, wie geht es dir heute?",
             "12345"]
    routes = asyncio.run(_router(detector).routes(texts))
    assert [(r.model, r.language) for r in routes] == [
        ("english", "en"), ("multi", "de"), ("english", UNDETERMINED)]


def test_router_pin_and_hint(detector: LanguageDetector) -> None:
    router = _router(detector)
    pinned = asyncio.run(router.routes(["Guten Morgen zusammen"], model="english"))
    assert pinned == [Route("english", "de", pinned[0].confidence)]
    hinted = asyncio.run(router.routes(["Good morning"], language="de-CH"))
    assert hinted == [Route("multi", "de", 1.0)]


def test_router_large_call_detects_in_a_thread(detector: LanguageDetector) -> None:
    texts = ["Guten Morgen, wie geht es dir heute?"] * (DETECT_INLINE_UP_TO + 5)
    routes = asyncio.run(_router(detector).routes(texts))
    assert len(routes) == len(texts) and {r.model for r in routes} == {"multi"}


def test_router_without_detector_sends_everything_to_the_fallback() -> None:
    routes = asyncio.run(_router(None).routes(["Guten Morgen, wie geht es dir heute?"]))
    assert routes == [Route("english", UNDETERMINED, 0.0)]
