"""Custom tasks and hot reload through the real server and client.

The model directories are copies of the committed default model in tmp_path; the custom
task `ticket_topic` is a manifest-level task with the user's own label names over an output
the graph already has (`sentiment_logits`), so no training is needed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from api_support import (
    DEFAULT_MODEL,
    make_config,
    metric_value,
    require_model,
    server_thread,
    wait_for,
)
from grpc_health.v1 import health_pb2

from wacht.client import WachtClient
from wacht.service.runtime.model_dir import write_sha256sums

MODEL = "minilm-moderation"
TICKET_LABELS = ["billing", "shipping", "other"]
TEXT = "my parcel never arrived and I was charged twice"


@contextlib.contextmanager
def serving(config: Any, capture: Any) -> Iterator[Any]:
    """server_thread, started with the test's output capture off: logging is configured at
    the start and must not keep this test's captured stream (closed after it) for later
    tests' servers."""
    with contextlib.ExitStack() as stack:
        with capture.disabled():
            server = stack.enter_context(server_thread(config))
        yield server


def model_copy(dest: Path, version: str, ticket_topic: bool = False,
               edit: Any = None) -> Path:
    """The default model at `dest` with its version set, optionally the custom task, and
    SHA256SUMS regenerated (so it verifies)."""
    shutil.copytree(DEFAULT_MODEL, dest)
    manifest = yaml.safe_load((dest / "manifest.yaml").read_text(encoding="utf-8"))
    manifest["version"] = version
    if ticket_topic:
        manifest["tasks"].append({
            "name": "ticket_topic", "output": "sentiment_logits", "activation": "softmax",
            "labels": [{"name": name, "threshold": 0.4} for name in TICKET_LABELS],
        })
    if edit is not None:
        edit(manifest)
    (dest / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False),
                                        encoding="utf-8")
    write_sha256sums(dest)
    return dest


def swap_in(models_dir: Path, staged: Path, name: str = "minilm") -> None:
    """Replace models_dir/name by `staged` the way an operator should: two renames."""
    live = models_dir / name
    old = models_dir / f".{name}-old-{time.monotonic_ns()}"
    os.rename(live, old)
    os.rename(staged, live)
    shutil.rmtree(old)


def versions(client: WachtClient) -> dict[str, str]:
    return {m.name: m.version for m in client.list_models().models}


def log_events(err: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in err.splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                out.append(record)
    return out


class Load:
    """Moderate and Analyze calls in a loop on their own thread, every outcome counted."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with WachtClient(self.address, timeout=30) as client:
            calls = (lambda: client.moderate([TEXT]), lambda: client.analyze([TEXT]))
            n = 0
            while not self._stop.is_set():
                try:
                    response = calls[n % 2]()
                    self.codes["OK"] += 1
                    self.versions[response.model.version] += 1
                except grpc.RpcError as exc:
                    self.codes[exc.code().name] += 1
                n += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    require_model()
    root = tmp_path / "models"
    root.mkdir()
    model_copy(root / "minilm", "1.0.0")
    return root


def reload_config(models_dir: Path, interval: float = 0.2) -> Any:
    return make_config(models=[], models_dir=models_dir, model_reload_interval_s=interval)


def test_watched_directory_swap_keeps_calls_ok_and_serves_the_new_task(
    models_dir: Path, tmp_path: Path
) -> None:
    with server_thread(reload_config(models_dir)) as server, \
            WachtClient(server.address, timeout=30) as client:
        assert versions(client) == {MODEL: "1.0.0"}
        staged = model_copy(models_dir / ".minilm-next", "1.1.0", ticket_topic=True)
        with Load(server.address) as load:
            wait_for(lambda: load.codes["OK"] >= 20, 30)
            before = load.codes["OK"]
            swap_in(models_dir, staged)
            wait_for(lambda: versions(client) == {MODEL: "1.1.0"}, 30)
            wait_for(lambda: load.versions["1.1.0"] >= 20, 30)
        # every call across the swap succeeded, on the old model and then the new one
        assert set(load.codes) == {"OK"}, load.codes
        assert load.codes["OK"] > before
        assert load.versions["1.0.0"] >= 20 and load.versions["1.1.0"] >= 20
        assert client.health() == health_pb2.HealthCheckResponse.SERVING
        metrics = server.metrics_text()
        assert metric_value(metrics, "wacht_model_reloads_total", result="loaded") == 1
        assert metric_value(metrics, "wacht_model_info", version="1.1.0") == 1
        assert metric_value(metrics, "wacht_model_info", version="1.0.0") == 0

        # the custom task answers, by name, beside the others
        response = client.analyze([TEXT], tasks=["ticket_topic"])
        (result,) = response.results
        (task,) = result.tasks
        assert task.task == "ticket_topic" and task.activation == "softmax"
        assert [s.label for s in task.scores] == TICKET_LABELS
        assert abs(sum(s.score for s in task.scores) - 1.0) < 1e-4
        assert list(task.predicted) in ([name] for name in TICKET_LABELS)
        assert response.model.version == "1.1.0"
        every = client.analyze([TEXT]).results[0]
        assert [t.task for t in every.tasks] == ["sentiment", "toxicity", "ticket_topic"]
        # two tasks over one output: the same probabilities under two sets of names
        by_task = {t.task: [s.score for s in t.scores] for t in every.tasks}
        assert by_task["ticket_topic"] == pytest.approx(by_task["sentiment"])

        # Models lists it with its labels, activation and thresholds
        for info in (client.list_models().models[0], client.model_info(MODEL)):
            ticket = next(t for t in info.tasks if t.name == "ticket_topic")
            assert ticket.output == "sentiment_logits" and ticket.activation == "softmax"
            assert [(label.name, label.category) for label in ticket.labels] == [
                (name, "") for name in TICKET_LABELS
            ]
            assert [label.default_threshold for label in ticket.labels] == pytest.approx(
                [0.4] * 3
            )
            assert "ticket_topic" not in info.categories

        # Moderate ignores a task without categories (raw scores still show it)
        moderated = client.moderate([TEXT], raw_scores=True).results[0]
        assert {c.category for c in moderated.categories} == {
            "toxicity", "hate", "insult", "profanity"
        }
        assert {s.label for s in moderated.raw_scores} >= set(TICKET_LABELS)
        assert moderated.model.version == "1.1.0"
        with pytest.raises(grpc.RpcError) as unknown:
            client.moderate([TEXT], categories=["ticket_topic"])
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_call_in_flight_during_a_swap_finishes_on_the_old_model(
    models_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # the watcher off: the swap happens when the test calls the reload SIGHUP runs
    with serving(reload_config(models_dir, interval=0), capfd) as server, \
            WachtClient(server.address, timeout=120) as client:
        state = server.server.state
        old_batcher = state.models[MODEL].batcher
        texts = [TEXT * 20] * 200  # ~40,000 tokens: seconds of work on a small CPU
        outcome: dict[str, Any] = {}

        def big_call() -> None:
            outcome["response"] = client.analyze(texts)
            outcome["ended"] = time.monotonic()

        caller = threading.Thread(target=big_call)
        caller.start()
        wait_for(lambda: old_batcher.queue_texts > 0, 30, 0.005)
        model_copy(models_dir / ".minilm-next", "2.0.0", ticket_topic=True)
        swap_in(models_dir, models_dir / ".minilm-next")
        (result,) = server.call(server.server.reload_models("test"))
        swapped = time.monotonic()
        assert result.result == "loaded" and result.version == "2.0.0"
        assert versions(client) == {MODEL: "2.0.0"}
        caller.join(120)
        response = outcome["response"]
        # it was still running when the new model took over, and finished on the old one
        assert outcome["ended"] > swapped
        assert response.model.version == "1.0.0"
        assert len(response.results) == len(texts)
        assert all([t.task for t in r.tasks] == ["sentiment", "toxicity"]
                   for r in response.results)
        assert client.analyze([TEXT]).model.version == "2.0.0"
        # the old batcher closes once that call is over, not before
        wait_for(lambda: log_events(capfd.readouterr().err, "model_retired"), 30)
        assert old_batcher.queue_texts == 0


def _flip_a_byte(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))


def _broken_manifest(directory: Path) -> None:
    (directory / "manifest.yaml").write_text("name: minilm-moderation\ntasks: [oops\n",
                                             encoding="utf-8")
    write_sha256sums(directory)


def _not_onnx(directory: Path) -> None:
    (directory / "model.onnx").write_bytes(b"not an onnx graph")
    write_sha256sums(directory)


def _four_labels(manifest: dict[str, Any]) -> None:
    manifest["tasks"].append({
        "name": "ticket_topic", "output": "sentiment_logits", "activation": "softmax",
        "labels": [{"name": n} for n in ("billing", "shipping", "returns", "other")],
    })


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("checksum", "model.onnx has sha256"),
        ("manifest", "invalid YAML"),
        ("onnx", "model.onnx"),
        ("labels", "lists 4 labels but output 'sentiment_logits' has 3 values"),
    ],
)
def test_bad_directory_is_refused_and_the_old_model_keeps_serving(
    models_dir: Path, capfd: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    with serving(reload_config(models_dir), capfd) as server, \
            WachtClient(server.address, timeout=30) as client:
        staged = models_dir / ".minilm-next"
        if case == "labels":
            model_copy(staged, "3.0.0", edit=_four_labels)
        else:
            model_copy(staged, "3.0.0", ticket_topic=True)
            {"checksum": lambda d: _flip_a_byte(d / "model.onnx"),
             "manifest": _broken_manifest, "onnx": _not_onnx}[case](staged)
        with Load(server.address) as load:
            wait_for(lambda: load.codes["OK"] >= 5, 30)
            swap_in(models_dir, staged)
            metrics = server.metrics_text
            wait_for(lambda: metric_value(
                metrics(), "wacht_model_reloads_total", result="refused") == 1, 30)
            time.sleep(0.6)  # a few more polls: a refused directory is not retried
            ok = load.codes["OK"]
            wait_for(lambda: load.codes["OK"] >= ok + 5, 30)
        assert set(load.codes) == {"OK"}, load.codes
        assert metric_value(metrics(), "wacht_model_reloads_total", result="refused") == 1
        assert metric_value(metrics(), "wacht_model_reloads_total", result="loaded") == 0
        assert versions(client) == {MODEL: "1.0.0"}
        assert client.health() == health_pb2.HealthCheckResponse.SERVING
        assert [t.task for t in client.analyze([TEXT]).results[0].tasks] == [
            "sentiment", "toxicity"
        ]
        (line,) = log_events(capfd.readouterr().err, "model_reload_refused")
        assert expected in line["error"]
        assert line["serving"] == f"{MODEL} 1.0.0" and line["trigger"] == "watch"
        assert TEXT not in json.dumps(line)

        # fixed in place: the next change is picked up
        swap_in(models_dir, model_copy(models_dir / ".minilm-fixed", "3.0.1"))
        wait_for(lambda: versions(client) == {MODEL: "3.0.1"}, 30)


def test_new_directory_is_added_and_a_name_clash_refused(
    models_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with serving(reload_config(models_dir, interval=0), capfd) as server, \
            WachtClient(server.address, timeout=30) as client:
        def rename(manifest: dict[str, Any]) -> None:
            manifest["name"] = "tickets"
            manifest["languages"] = []  # served only when named; routing stays as it was

        model_copy(models_dir / "tickets", "0.1.0", ticket_topic=True, edit=rename)
        model_copy(models_dir / "twin", "9.9.9")  # a second minilm-moderation
        results = {r.path.name: r for r in server.call(server.server.reload_models())}
        assert results["tickets"].result == "loaded"
        assert results["twin"].result == "refused"
        assert "already served" in results["twin"].error
        assert versions(client) == {MODEL: "1.0.0", "tickets": "0.1.0"}
        answer = client.analyze([TEXT], model="tickets", tasks=["ticket_topic"])
        assert answer.model.name == "tickets"
        assert client.analyze([TEXT]).model.name == MODEL  # routing unchanged
        with pytest.raises(grpc.RpcError) as unknown:
            client.analyze([TEXT], tasks=["ticket_topic"])  # the default has no such task
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tasks[0]" in unknown.value.details()
        assert len(log_events(capfd.readouterr().err, "model_reload_refused")) == 1


def test_cli_and_http_show_the_custom_task_after_a_reload(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from http_support import call

    from wacht.service.cli import main

    config = make_config(models=[], models_dir=models_dir, model_reload_interval_s=0.0,
                         http={"address": "127.0.0.1:0"})
    with serving(config, capsys) as server:
        swap_in(models_dir, model_copy(models_dir / ".minilm-next", "1.2.0", ticket_topic=True))
        assert [r.result for r in server.call(server.server.reload_models())] == ["loaded"]
        address = ["--address", server.address]
        assert main(["analyze", *address, "--task", "ticket_topic", TEXT]) == 0
        printed = json.loads(capsys.readouterr().out)
        (task,) = printed["results"][0]["tasks"]
        assert task["task"] == "ticket_topic"
        assert [s["label"] for s in task["scores"]] == TICKET_LABELS
        assert printed["model"]["version"] == "1.2.0"
        for command in (["models", "list", *address], ["models", "info", *address, MODEL]):
            assert main(command) == 0
            shown = json.loads(capsys.readouterr().out)
            info = shown["models"][0] if "models" in shown else shown
            ticket = next(t for t in info["tasks"] if t["name"] == "ticket_topic")
            assert [label["name"] for label in ticket["labels"]] == TICKET_LABELS
            assert ticket["activation"] == "softmax"

        # the HTTP gateway answers from the same core
        base = server.http_url
        status, _, body = call(base + "/wacht/v1/analyze",
                               {"texts": [{"text": TEXT}], "tasks": ["ticket_topic"]})
        assert status == 200, body
        assert body["results"][0]["tasks"][0]["task"] == "ticket_topic"
        assert body["model"]["version"] == "1.2.0"
        status, _, listed = call(base + "/wacht/v1/models")
        assert status == 200
        tasks = {t["name"]: t for t in listed["models"][0]["tasks"]}
        assert [label["name"] for label in tasks["ticket_topic"]["labels"]] == TICKET_LABELS
