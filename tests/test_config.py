"""Config: defaults, YAML, WACHT_* overrides, validation messages, default model path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wacht.service.config import PACKAGE_ROOT, ConfigError, load_config


def test_defaults_need_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: the default model is still found
    config = load_config(None, env={})
    assert config.address == "127.0.0.1:50051" and config.metrics_port == 9464
    assert config.device == "cpu" and config.policies_dir == Path("policies")
    assert config.policies_path() == (Path(__file__).resolve().parents[1] / "policies")
    assert config.limits.max_texts_per_request == 256
    assert config.limits.max_text_bytes == 65536
    assert config.limits.stream_inflight_messages == 8
    assert config.log.raw_text is False and config.shutdown_grace_s == 10.0
    assert config.model_paths() == [
        PACKAGE_ROOT / "models" / "minilm-moderation",
        PACKAGE_ROOT / "models" / "use-multilingual-moderation",
    ]


def test_yaml_then_environment(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    file = tmp_path / "wacht.yaml"
    file.write_text(
        "address: 0.0.0.0:6000\n"
        "models: [policies]\n"
        "policies_dir: policies\n"
        "batching: {max_batch_size: 16, max_queue_delay_ms: 5}\n"
        "limits: {max_text_bytes: 1000}\n"
        "log: {level: DEBUG}\n"
    )
    env = {
        "WACHT_CONFIG": str(file),
        "WACHT_BATCHING__MAX_BATCH_SIZE": "1",
        "WACHT_METRICS_PORT": "0",
        "WACHT_MODELS": "/m/a, /m/b",
        "WACHT_LOG__RAW_TEXT": "true",
    }
    config = load_config(None, env=env)
    assert config.address == "0.0.0.0:6000"
    assert config.batching.max_batch_size == 1 and config.batching.max_queue_delay_ms == 5.0
    assert config.limits.max_text_bytes == 1000 and config.metrics_port == 0
    assert config.models == [Path("/m/a"), Path("/m/b")]
    assert config.policies_dir == policies  # relative to the file
    assert config.log.level == "debug" and config.log.raw_text is True
    assert str(file) in config.source and "environment" in config.source


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("adress: x:1\n", "unknown key(s) ['adress']"),
        ("batching: {max_batch_sise: 2}\n", "batching: unknown key(s) ['max_batch_sise']"),
        ("metrics_port: lots\n", "metrics_port: expected an integer"),
        ("address: nope\n", "address: expected host:port"),
        ("device: tpu\n", "device: must be one of"),
        ("limits: {max_texts_per_request: 0}\n", "limits.max_texts_per_request: must be >= 1"),
        ("log: {format: xml}\n", "log.format"),
        ("batching: {micro_batch_padding: 1.5}\n", "batching.micro_batch_padding: is a share"),
        ("policies_dir: /does/not/exist\n", "policies_dir"),
        ("- a list\n", "expected a mapping"),
        ("a: [unclosed\n", "invalid YAML"),
        ("workers: 0\n", "workers: must be >= 1, got 0"),
        ("accept_loops: -1\n", "accept_loops: must be >= 0, got -1"),
        ("max_loop_busy: 1.5\n", "max_loop_busy: is a share between 0 and 1, got 1.5"),
        ("batching:\n  max_standing_wait_ms: -5\n",
         "batching.max_standing_wait_ms: must be >= 0 (0 = off), got -5"),
        ("batching:\n  max_queue_wait_ms: -1\n",
         "batching.max_queue_wait_ms: must be >= 0 (0 = off), got -1"),
        ("workers: 2\nworker: 3\n", "worker: must be between 0 and workers (2), got 3"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    assert message in str(caught.value)
    assert str(file) in str(caught.value)


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"WACHT_LIMITS__MAX_TEXT_BYTES": "many"})
    assert "limits.max_text_bytes" in str(caught.value) and "environment" in str(caught.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config("/nope/wacht.yaml", env={})


@pytest.mark.parametrize(
    ("env", "cores", "expected"),
    [
        ({}, 2, (2, 1)),  # CPU: one single-threaded forward per core
        ({}, 8, (8, 1)),
        ({"WACHT_BATCHING__INFERENCE_THREADS": "1"}, 8, (1, 8)),
        ({"WACHT_BATCHING__INFERENCE_THREADS": "2", "WACHT_INTRA_OP_THREADS": "3"}, 8, (2, 3)),
        ({"WACHT_DEVICE": "cuda"}, 8, (1, 8)),
        ({"WACHT_WORKERS": "4"}, 8, (2, 1)),  # each worker its share of the cores
        ({"WACHT_WORKERS": "4"}, 2, (1, 1)),
    ],
)
def test_thread_defaults_resolve_from_the_cores(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], cores: int, expected: tuple[int, int]
) -> None:
    monkeypatch.setattr("wacht.service.config.available_cores", lambda: cores)
    assert load_config(None, env=env).threads() == expected


def test_available_cores_is_positive_and_within_the_machine() -> None:
    from wacht.service.config import available_cores

    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def test_models_dir_and_reload_interval(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    file = tmp_path / "c.yaml"
    file.write_text("models: []\nmodels_dir: drop\nmodel_reload_interval_s: 5\n")
    config = load_config(file, env={})
    assert config.models_dir_path() == tmp_path / "drop"  # relative to the file
    assert config.model_reload_interval_s == 5.0
    for text, message in (
        ("models: []\n", "models: at least one model directory"),
        ("models_dir: nowhere\n", "models_dir: nowhere is not a directory"),
        ("model_reload_interval_s: -1\n", "model_reload_interval_s: must be >= 0"),
    ):
        file.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(file, env={})
