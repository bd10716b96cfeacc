"""The wacht CLI against the real server (through service.client)."""

from __future__ import annotations

import json

import pytest
from api_support import ServerThread

from wacht.service.cli import main


def test_moderate_prints_json(wacht_server: ServerThread, capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["moderate", "--address", wacht_server.address, "--explain", "evidence", "hi", "you idiot"]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in data["results"]] == ["0", "1"]
    assert data["results"][1]["explanation"]["text"]


def test_analyze_health_models(wacht_server: ServerThread, capsys: pytest.CaptureFixture) -> None:
    address = ["--address", wacht_server.address]
    assert main(["analyze", *address, "--task", "sentiment", "lovely"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [t["task"] for t in result["tasks"]] == ["sentiment"]
    assert main(["health", *address]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", *address, "--service", "wacht.v1.Models"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["models", "list", *address]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert models[0]["is_default"] is True
    assert main(["models", "info", *address, models[0]["name"]]) == 0
    assert json.loads(capsys.readouterr().out)["files"]


def test_errors_exit_nonzero(wacht_server: ServerThread, capsys: pytest.CaptureFixture) -> None:
    assert main(["moderate", "--address", wacht_server.address, "--policy", "nope", "x"]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "policy" in err


def test_health_of_nothing_listening(capsys: pytest.CaptureFixture) -> None:
    from api_support import free_port

    assert main(["health", "--address", f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_model_factory_commands_dispatch(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("wacht.models.cli", reason="the model factory CLI (engineer M) is not here")
    with pytest.raises(SystemExit) as caught:
        main(["models", "eval", "--help"])
    assert caught.value.code == 0
    assert "wacht models eval" in capsys.readouterr().out
