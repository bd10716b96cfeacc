"""Policy files: validation with file/key/problem, defaults, reload (good and bad), watching."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from wacht.service.moderation.policies import BUILTIN_SOURCE, PolicyError, PolicyStore

REPO = Path(__file__).resolve().parent.parent
THRESHOLDS = {"toxicity": 0.5, "hate": 0.4, "insult": 0.5, "profanity": 0.5}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_default_from_manifest_thresholds():
    store = PolicyStore.load(None, THRESHOLDS)
    policy = store.get()
    assert store.default_name == "default" and policy.source == BUILTIN_SOURCE
    assert policy.rules["hate"].review == 0.4
    assert policy.rules["hate"].block == pytest.approx(0.7)
    assert all(rule.enabled for rule in policy.rules.values())


@pytest.mark.parametrize(
    "thresholds", [THRESHOLDS, {"toxicity": 0.12, "hate": 0.9, "insult": 0.0, "profanity": 1.0}]
)
def test_shipped_policies_load_for_any_manifest_and_order_strictness(thresholds):
    store = PolicyStore.load(REPO / "policies", thresholds)
    assert {"default", "strict", "lenient"} <= set(store.names())
    assert store.default_name == "default"
    default, strict, lenient = store.get(), store.get("strict"), store.get("lenient")
    assert default.rules["hate"].review == thresholds["hate"]
    for category in thresholds:
        assert strict.rules[category].review <= default.rules[category].review
        assert default.rules[category].review <= lenient.rules[category].review
        for policy in (default, strict, lenient):
            rule = policy.rules[category]
            assert 0 <= rule.review <= rule.block <= 1
    assert not lenient.rules["profanity"].enabled


def test_manifest_expressions(tmp_path):
    write(tmp_path, "p.yaml", "default: true\ncategories:\n"
          "  hate: {review: manifest * 0.5, block: manifest + 0.3}\n"
          "  insult: {review: manifest - 0.2, block: manifest+0.9}\n"
          "  toxicity: {review: manifest}\n")
    rules = PolicyStore.load(tmp_path, THRESHOLDS).get().rules
    assert (rules["hate"].review, rules["hate"].block) == (0.2, 0.7)
    assert (rules["insult"].review, rules["insult"].block) == (0.3, 1.0)  # clamped to 1
    assert rules["toxicity"].review == 0.5


def test_file_fills_missing_keys_from_manifest(tmp_path):
    write(tmp_path, "mine.yaml", "default: true\ncategories:\n  hate: {block: 0.3}\n"
          "  insult: {review: 0.9}\n  threat: {review: 0.2, block: 0.6}\n")
    store = PolicyStore.load(tmp_path, THRESHOLDS)
    policy = store.get()
    assert store.default_name == "mine" and policy.name == "mine"
    assert (policy.rules["hate"].review, policy.rules["hate"].block) == (0.3, 0.3)
    assert policy.rules["insult"].review == 0.9 and policy.rules["insult"].block >= 0.9
    assert policy.rules["toxicity"].review == 0.5  # untouched: manifest
    assert policy.rules["threat"].block == 0.6
    assert "default" in store.names()  # the built-in stays available


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("categories:\n  hate: {review: 1.5}\n", "categories.hate.review", "between 0 and 1"),
        ("categories:\n  hate: {review: yes}\n", "categories.hate.review", "between 0 and 1"),
        ("categories:\n  hate: {review: manifest ^ 2}\n", "categories.hate.review",
         "'manifest * x'"),
        ("categories:\n  hate: {review: manifest, block: manifest - 0.1}\n", "categories.hate",
         "above block threshold"),
        ("categories:\n  hate: {review: 0.8, block: 0.6}\n", "categories.hate",
         "above block threshold"),
        ("categories:\n  hat: {review: 0.5}\n", "categories.hat", "unknown category"),
        ("categories:\n  hate: {reveiw: 0.5}\n", "categories.hate.reveiw", "unknown key"),
        ("categories:\n  hate: {enabled: 'no'}\n", "categories.hate.enabled", "true or false"),
        ("categoires: {}\n", "categoires", "unknown key"),
        ("name: 'bad name!'\n", "name", "letters"),
        ("- just\n- a list\n", "", "mapping at the top level"),
        ("categories: [oops\n", "", "invalid YAML"),
    ],
)
def test_bad_file_error_names_file_key_and_problem(tmp_path, body, key, problem):
    path = write(tmp_path, "broken.yaml", body)
    with pytest.raises(PolicyError) as info:
        PolicyStore.load(tmp_path, THRESHOLDS)
    message = str(info.value)
    assert str(path) in message and key in message and problem in message


def test_two_defaults_and_duplicate_names_are_errors(tmp_path):
    write(tmp_path, "a.yaml", "default: true\n")
    write(tmp_path, "b.yaml", "default: true\n")
    with pytest.raises(PolicyError, match="more than one policy"):
        PolicyStore.load(tmp_path, THRESHOLDS)
    (tmp_path / "b.yaml").write_text("name: a\n")
    with pytest.raises(PolicyError, match="already defined"):
        PolicyStore.load(tmp_path, THRESHOLDS)


def test_configured_default_must_exist(tmp_path):
    write(tmp_path, "a.yaml", "description: x\n")
    assert PolicyStore.load(tmp_path, THRESHOLDS, default="a").get().name == "a"
    with pytest.raises(PolicyError, match="'nope' is not defined"):
        PolicyStore.load(tmp_path, THRESHOLDS, default="nope")


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        PolicyStore.load(tmp_path / "absent", THRESHOLDS)


def test_unknown_policy_is_key_error():
    with pytest.raises(KeyError):
        PolicyStore.load(None, THRESHOLDS).get("nope")


def test_reload_good_then_bad_keeps_old(tmp_path):
    path = write(tmp_path, "site.yaml", "default: true\ncategories:\n  hate: {review: 0.2}\n")
    store = PolicyStore.load(tmp_path, THRESHOLDS)
    assert store.get().rules["hate"].review == 0.2
    path.write_text("default: true\ncategories:\n  hate: {review: 0.3}\n")
    write(tmp_path, "extra.yaml", "description: new one\n")
    assert store.reload() == []
    assert store.get().rules["hate"].review == 0.3 and "extra" in store.names()
    path.write_text("default: true\ncategories:\n  hate: {review: 3}\n")
    errors = store.reload()
    assert len(errors) == 1 and str(path) in errors[0] and "categories.hate.review" in errors[0]
    assert store.get().rules["hate"].review == 0.3  # the old set is kept
    assert "extra" in store.names()


async def test_watcher_reloads_on_change_and_survives_a_bad_file(tmp_path):
    path = write(tmp_path, "site.yaml", "default: true\ncategories:\n  hate: {review: 0.2}\n")
    store = PolicyStore.load(tmp_path, THRESHOLDS)
    store.start_watching(interval_s=0.02)
    try:
        path.write_text("default: true\ncategories:\n  hate: {review: 0.25}\n")
        os.utime(path, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
        for _ in range(200):
            if store.get().rules["hate"].review == 0.25:
                break
            await asyncio.sleep(0.02)
        assert store.get().rules["hate"].review == 0.25
        write(tmp_path, "bad.yaml", "categories: {nope: {}}\n")
        await asyncio.sleep(0.2)
        assert "bad" not in store.names() and store.get().rules["hate"].review == 0.25
    finally:
        await store.stop_watching()
