"""Fakes for the pure-logic moderation tests: a batcher with Batcher.score's signature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wacht.service.runtime.model_dir import parse_manifest

MANIFEST = parse_manifest(
    {
        "name": "fake-moderation",
        "version": "0.0.1",
        "max_length": 128,
        "tasks": [
            {
                "name": "sentiment",
                "output": "sentiment_logits",
                "activation": "softmax",
                "labels": [{"name": "negative"}, {"name": "neutral"}, {"name": "positive"}],
            },
            {
                "name": "toxicity",
                "output": "toxicity_logits",
                "activation": "sigmoid",
                "labels": [
                    {"name": "offensive", "category": "toxicity", "threshold": 0.5},
                    {"name": "hate", "category": "hate", "threshold": 0.5},
                    {"name": "insult", "category": "insult", "threshold": 0.5},
                    {"name": "profanity", "category": "profanity", "threshold": 0.5},
                ],
            },
        ],
    }
)
LABELS = ("offensive", "hate", "insult", "profanity")
THRESHOLDS = {"toxicity": 0.5, "hate": 0.5, "insult": 0.5, "profanity": 0.5}


@dataclass
class FakeTextScores:
    scores: dict[str, np.ndarray]
    tokens: int
    windows: int


@dataclass
class FakeTimings:
    queue_ns: int = 1
    tokenize_ns: int = 2
    inference_ns: int = 3
    tokens: int = 0


class FakeBatcher:
    """Scores from a table of exact texts, else from words: each listed word adds its scores.

    `fixed[text] = {"offensive": 0.5, ...}`; `words["idiot"] = {"offensive": 0.6, ...}`
    (word contributions combine as 1 - prod(1 - p)).
    """

    def __init__(
        self,
        fixed: dict[str, dict[str, float]] | None = None,
        words: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.fixed = fixed or {}
        self.words = words or {}
        self.calls: list[list[str]] = []

    def _toxicity(self, text: str) -> list[float]:
        if text in self.fixed:
            return [self.fixed[text].get(label, 0.01) for label in LABELS]
        keep = [1.0] * len(LABELS)
        lowered = text.lower()
        for word, contrib in self.words.items():
            if word in lowered:
                for i, label in enumerate(LABELS):
                    keep[i] *= 1.0 - contrib.get(label, 0.0)
        return [min(0.999, max(0.01, 1.0 - k)) for k in keep]

    async def score(self, texts, *, truncation="window", max_windows=16, deadline=None, caller=""):
        self.calls.append(list(texts))
        out = []
        for text in texts:
            tox = self._toxicity(text)
            neg = max(tox)
            out.append(
                FakeTextScores(
                    scores={
                        "sentiment": np.array([neg, (1 - neg) / 2, (1 - neg) / 2], np.float32),
                        "toxicity": np.array(tox, np.float64),
                    },
                    tokens=len(text.split()),
                    windows=1,
                )
            )
        return out, FakeTimings(tokens=sum(t.tokens for t in out))
