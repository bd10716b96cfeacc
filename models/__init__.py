"""Model factory: data loaders, multi-task training, ONNX export, quantisation, evaluation, import.

Modules used by the serving environment (`data`, `evaluate`, `cli`) import torch/transformers
lazily; everything else needs the `train` extra.
"""

SENTIMENT_LABELS = ("negative", "neutral", "positive")
TOXICITY_LABELS = ("offensive", "hate", "insult", "profanity")
TOXICITY_CATEGORIES = {
    "offensive": "toxicity",
    "hate": "hate",
    "insult": "insult",
    "profanity": "profanity",
}
DEFAULT_MODEL_NAME = "minilm-moderation"
