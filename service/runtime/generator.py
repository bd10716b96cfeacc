"""Generative explainer runtime: an ONNX decoder with KV cache, run by onnxruntime.

Serving needs only onnxruntime, tokenizers and numpy. The model directory is written by
`python -m wacht.models.explainer` (see docs/explainer.md): model.onnx (+ external data),
tokenizer.json, generation.json (chat format), manifest.yaml (kind: generator), CARD.md,
SHA256SUMS.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml
from tokenizers import Tokenizer

from wacht.service.runtime.model_dir import ModelDirError, read_sha256sums, verify_sha256sums

GENERATION_FILE = "generation.json"
_ONNX_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class PromptTooLong(ValueError):
    """The chat prompt plus max_new_tokens does not fit the model's context."""

    def __init__(self, tokens: int, max_new_tokens: int, limit: int) -> None:
        super().__init__(
            f"prompt has {tokens} tokens; with max_new_tokens={max_new_tokens} it exceeds "
            f"the context length {limit}"
        )
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True)
class GeneratorManifest:
    name: str
    version: str
    context_length: int
    eos_token_ids: tuple[int, ...]
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    # Languages it explains in; other texts get the evidence sentence (reason "language").
    languages: tuple[str, ...] = ("en",)


@dataclass(frozen=True)
class ChatFormat:
    """A chat template reduced to strings: enough for ChatML, Llama-3, Phi-3 and the like."""

    roles: dict[str, tuple[str, str]]  # role -> (text before content, text after content)
    generation_prompt: str
    prefix: str = ""  # once, before the first message
    default_system: str | None = None  # used when the messages carry no system message

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatFormat:
        roles = {str(k): (str(v[0]), str(v[1])) for k, v in data["roles"].items()}
        return cls(
            roles=roles,
            generation_prompt=str(data["generation_prompt"]),
            prefix=str(data.get("prefix", "")),
            default_system=data.get("default_system"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "roles": {k: list(v) for k, v in self.roles.items()},
            "generation_prompt": self.generation_prompt,
            "default_system": self.default_system,
        }

    def segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """The prompt as (text, is_template) pieces; content pieces are user-controlled."""
        if messages and messages[0].get("role") != "system" and self.default_system is not None:
            messages = [{"role": "system", "content": self.default_system}, *messages]
        pieces: list[tuple[str, bool]] = [(self.prefix, True)]
        for i, message in enumerate(messages):
            role = message.get("role", "")
            if role not in self.roles:
                raise ValueError(f"messages[{i}]: role {role!r} is not one of {sorted(self.roles)}")
            before, after = self.roles[role]
            pieces += [(before, True), (str(message.get("content", "")), False), (after, True)]
        pieces.append((self.generation_prompt, True))
        return [(text, special) for text, special in pieces if text]

    def render(self, messages: list[dict[str, str]]) -> str:
        return "".join(text for text, _ in self.segments(messages))


CHATML = ChatFormat(
    roles={
        role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ("system", "user", "assistant")
    },
    generation_prompt="<|im_start|>assistant\n",
)


@dataclass
class GenerationStats:
    """Filled in while a stream runs; read by the generation queue for its rate estimates."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0  # time of the one-token forwards after the prompt
    decode_steps: int = 0
    stop_reason: str = ""  # "eos" | "max_new_tokens" | "stopped" | "context"


class _Detokenizer:
    """Turns a growing token list into text deltas that never split a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


def load_generator_manifest(path: Path) -> GeneratorManifest:
    file = path / "manifest.yaml"
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelDirError(f"{file}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != "generator":
        raise ModelDirError(f"{file}: not a generator model directory (kind: generator)")
    try:
        return GeneratorManifest(
            name=str(data["name"]),
            version=str(data["version"]),
            context_length=int(data["context_length"]),
            eos_token_ids=tuple(int(i) for i in data["eos_token_ids"]),
            precision=str(data.get("precision", "fp32")),
            provenance=dict(data.get("provenance") or {}),
            languages=tuple(str(x).lower() for x in data.get("languages") or ["en"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelDirError(f"{file}: missing or invalid key: {exc}") from exc


class Generator:
    """Greedy or temperature decoding over an ONNX causal LM exported with past key values."""

    name: str

    def __init__(
        self,
        path: Path,
        manifest: GeneratorManifest,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        chat_format: ChatFormat,
        repetition_penalty: float = 1.0,
    ) -> None:
        self.path = path
        self.repetition_penalty = repetition_penalty
        self.manifest = manifest
        self.name = manifest.name
        self.session = session
        self.tokenizer = tokenizer
        self.chat_format = chat_format
        self._eos = frozenset(manifest.eos_token_ids)
        self._input_names = {i.name for i in session.get_inputs()}
        self._past: list[tuple[str, str, tuple[int, int], Any]] = []  # input, output, dims, dtype
        for inp in session.get_inputs():
            if inp.name.startswith("past_key_values."):
                heads, head_dim = inp.shape[1], inp.shape[3]
                if not isinstance(heads, int) or not isinstance(head_dim, int):
                    raise ModelDirError(f"{path}: {inp.name} has no static head dims: {inp.shape}")
                output = "present." + inp.name[len("past_key_values.") :]
                self._past.append((inp.name, output, (heads, head_dim), _ONNX_FLOAT[inp.type]))
        if not self._past or "input_ids" not in self._input_names:
            raise ModelDirError(f"{path}: model.onnx is not a decoder with past_key_values inputs")
        self._encode_lock = threading.Lock()
        self._outputs = ["logits"] + [output for _, output, _, _ in self._past]

    @classmethod
    def load(cls, path: str | Path, *, intra_op_threads: int = 0, verify: bool = True) -> Generator:
        root = Path(path)
        if not root.is_dir():
            raise ModelDirError(f"{root}: not a directory")
        if verify:
            verify_sha256sums(root, read_sha256sums(root))
        manifest = load_generator_manifest(root)
        try:
            generation = json.loads((root / GENERATION_FILE).read_text(encoding="utf-8"))
            chat_format = ChatFormat.from_json(generation["chat_format"])
            penalty = float(generation.get("repetition_penalty", 1.0))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelDirError(f"{root / GENERATION_FILE}: {exc!r}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(root / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(root, manifest, session, tokenizer, chat_format, penalty)

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat prompt. Message content is encoded with special tokens as
        plain text, so a text containing '<|im_end|>' cannot break out of its message."""
        ids: list[int] = []
        with self._encode_lock:
            for text, is_template in self.chat_format.segments(messages):
                self.tokenizer.encode_special_tokens = not is_template
                try:
                    ids += self.tokenizer.encode(text, add_special_tokens=False).ids
                finally:
                    self.tokenizer.encode_special_tokens = False
        return ids

    def forward(
        self, ids: list[int], past: list[np.ndarray] | None, past_length: int
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder call: logits [len(ids), vocab] and the new cache."""
        n = len(ids)
        feeds: dict[str, np.ndarray] = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = np.ones((1, past_length + n), dtype=np.int64)
        if "position_ids" in self._input_names:
            feeds["position_ids"] = np.arange(past_length, past_length + n, dtype=np.int64)[None]
        for i, (name, _, (heads, head_dim), dtype) in enumerate(self._past):
            feeds[name] = (
                past[i] if past is not None else np.zeros((1, heads, 0, head_dim), dtype=dtype)
            )
        outputs = self.session.run(self._outputs, feeds)
        return outputs[0][0], outputs[1:]

    def stream(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] | None = None,
        *,
        seed: int | None = None,
        stats: GenerationStats | None = None,
        repetition_penalty: float | None = None,
    ) -> Iterator[str]:
        """Yield text deltas of the assistant's reply (chat template applied).

        repetition_penalty (> 1 discourages) applies to tokens already generated, not to the
        prompt, so quoting the input and naming categories stay cheap; None = the directory's
        default (generation.json), else 1.0."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        stats = stats if stats is not None else GenerationStats()
        prompt = self.encode_prompt(messages)
        stats.prompt_tokens = len(prompt)
        if len(prompt) + max_new_tokens > self.context_length:
            raise PromptTooLong(len(prompt), max_new_tokens, self.context_length)
        penalty = self.repetition_penalty if repetition_penalty is None else repetition_penalty
        if penalty <= 0:
            raise ValueError("repetition_penalty must be positive")
        return self._decode(prompt, max_new_tokens, temperature, should_stop, seed, stats, penalty)

    def _decode(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float,
        should_stop: Callable[[], bool] | None,
        seed: int | None,
        stats: GenerationStats,
        penalty: float,
    ) -> Iterator[str]:
        rng = np.random.default_rng(seed)
        generated: list[int] = []
        detok = _Detokenizer(self.tokenizer)
        if should_stop is not None and should_stop():
            stats.stop_reason = "stopped"
            return
        started = time.perf_counter()
        logits, past = self.forward(prompt, None, 0)
        stats.prefill_s = time.perf_counter() - started
        length = len(prompt)
        decode_started = time.perf_counter()
        while True:
            scores = logits[-1]
            if penalty != 1.0 and generated:
                seen = np.unique(np.asarray(generated))
                scores = scores.copy()
                values = scores[seen]
                scores[seen] = np.where(values > 0, values / penalty, values * penalty)
            token = _pick(scores, temperature, rng)
            if token in self._eos:
                stats.stop_reason = "eos"
                break
            stats.new_tokens += 1
            generated.append(token)
            delta = detok.push(token)
            if delta:
                yield delta
            if stats.new_tokens >= max_new_tokens:
                stats.stop_reason = "max_new_tokens"
                break
            if should_stop is not None and should_stop():
                stats.stop_reason = "stopped"
                break
            logits, past = self.forward([token], past, length)
            length += 1
            stats.decode_steps += 1
            stats.decode_s = time.perf_counter() - decode_started
        stats.decode_s = time.perf_counter() - decode_started
        tail = detok.flush()
        if tail:
            yield tail

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 96) -> str:
        """The whole greedy reply as one string (tests, benchmarks)."""
        return "".join(self.stream(messages, max_new_tokens))


def _pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
