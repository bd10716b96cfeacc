"""End to end: finetune a new task head-only, drop the directory into a running server's
models_dir, and Analyze answers the new task after the hot reload (no restart)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from api_support import make_config, require_model, server_thread, wait_for
from test_model_finetune_train import TOPICS, rows, write

from wacht.client import WachtClient

pytestmark = pytest.mark.train


def test_finetuned_directory_is_picked_up_and_answers_the_new_task(tmp_path: Path) -> None:
    from wacht.models.finetune import finetune

    model = require_model()
    live = tmp_path / "models"
    shutil.copytree(model, live / "minilm")
    config = make_config(models=[], models_dir=live, model_reload_interval_s=0.2)
    with server_thread(config) as server, WachtClient(server.address, timeout=30) as client:
        assert [m.name for m in client.list_models().models] == ["minilm-moderation"]
        out = tmp_path / "build" / "minilm-topic"
        finetune(model, write(tmp_path / "train.csv", rows(1, 150)), "topic", out,
                 data_license="CC0 (synthetic)")
        staged = live / ".minilm-topic-incoming"  # hidden: the watcher skips it
        shutil.copytree(out, staged)
        os.rename(staged, live / "minilm-topic")  # appears whole
        wait_for(lambda: "minilm-topic" in {m.name for m in client.list_models().models}, 60)
        info = client.model_info("minilm-topic")
        topic = next(t for t in info.tasks if t.name == "topic")
        assert [label.name for label in topic.labels] == sorted(TOPICS)
        texts = ["the goalkeeper saved it in the final minute", "my mortgage rate went up"]
        answer = client.analyze(texts, model="minilm-topic", tasks=["topic"])
        assert answer.model.name == "minilm-topic"
        predicted = [list(r.tasks[0].predicted) for r in answer.results]
        assert predicted == [["sport"], ["money"]]
        # one forward still answers the old heads beside the new one
        every = client.analyze(texts[:1], model="minilm-topic").results[0]
        assert [t.task for t in every.tasks] == ["sentiment", "toxicity", "topic"]
