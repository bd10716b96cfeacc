"""`wacht serve --http` as a real process, at debug log level: texts sent through every HTTP
front end (good and bad requests) and API keys never reach the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from api_support import DEFAULT_MODEL, REPO_ROOT, free_port, require_model, wait_for
from http_support import call

SECRET = "Zebrafinch Quokka 4711 you are an idiot"
KEY = "key-Aardvark-0815"


@pytest.mark.slow
def test_http_never_logs_texts_or_keys(tmp_path: Path) -> None:
    require_model()
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACHT_")}
    env.update({
        "WACHT_ADDRESS": f"127.0.0.1:{grpc_port}",
        "WACHT_METRICS_PORT": "0",
        "WACHT_MODELS": str(DEFAULT_MODEL),
        "WACHT_LOG__LEVEL": "debug",
    })
    log_file = tmp_path / "server.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wacht.service", "serve", "--http", f"127.0.0.1:{http_port}"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        def up() -> bool:
            try:
                return call(base + "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(up, 90)
        auth = {"Authorization": f"Bearer {KEY}"}
        requests = [
            ("/wacht/v1/moderate", {"texts": [{"text": SECRET}], "evidenceSpans": True}),
            ("/wacht/v1/moderate", {"texts": [{"text": SECRET}], "policy": SECRET}),
            ("/wacht/v1/moderate", {"texts": SECRET}),
            ("/wacht/v1/analyze", {"texts": [{"text": SECRET}], "tasks": [SECRET]}),
            ("/wacht/v1/explain", {"text": {"text": SECRET}}),
            ("/v1/moderations", {"input": [SECRET, SECRET]}),
            ("/v1/moderations", {"input": SECRET, "model": SECRET}),
            (f"/v1alpha1/comments:analyze?key={KEY}",
             {"comment": {"text": SECRET}, "requestedAttributes": {"TOXICITY": {}}}),
            (f"/v1alpha1/comments:analyze?key={KEY}",
             {"comment": {"text": SECRET}, "requestedAttributes": {SECRET: {}}}),
            ("/v1alpha1/comments:analyze", b'{"comment": {"text": "' + SECRET.encode() + b'"'),
        ]
        statuses = [call(base + path, body, headers=auth)[0] for path, body in requests]
        assert statuses == [200, 400, 400, 400, 200, 200, 404, 200, 400, 400]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log_file.read_text()
    assert '"http listening"' in text and '"http request"' in text  # debug lines were written
    for word in ("Zebrafinch", "Quokka", "Aardvark"):
        assert word not in text, f"{word!r} leaked into the server log"
    assert process.returncode == 0
