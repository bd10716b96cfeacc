"""Tokenisation into model windows with `tokenizers` (no transformers).

A text becomes one or more *windows*: token id lists with the model's special tokens
around them, each at most `max_length` long. Texts longer than one window are handled by
the truncation mode:

- ``window``: sliding windows of ``max_length - specials`` content tokens, a new window
  every ``window_stride`` tokens; the last window is aligned to the end of the text so the
  tail is always scored. At most ``max_windows`` windows per text: when a text needs more,
  the windows are *spread* evenly from the first to the last token (the stride grows).
  That still covers every token while ``tokens <= max_windows * content`` and otherwise
  leaves evenly spaced gaps in the middle, but never drops the end of a text — the end of
  a long post is where abuse is often appended.
- ``head``: the first window only.
- ``reject``: raise :class:`TextTooLong` naming the text's index.

Padding is not done here: the tokenizer file's own padding and truncation are switched
off and the engine pads each micro-batch to its longest window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer

Truncation = Literal["window", "head", "reject"]
TRUNCATIONS: tuple[str, ...] = ("window", "head", "reject")
SEQUENTIAL_UP_TO = 8  # texts; larger calls use the tokenizer's parallel encode_batch


@dataclass
class EncodedText:
    """One input text as model windows."""

    windows: list[list[int]]  # token ids per window, special tokens included
    tokens: int  # tokens of the text (no specials, no padding)


class TextTooLong(ValueError):
    """truncation="reject" and the text needs more than one window."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"text {index} has {tokens} tokens; the limit is {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


def window_starts(tokens: int, content: int, stride: int, max_windows: int) -> list[int]:
    """Start offsets of the windows of `content` tokens covering a text of `tokens` tokens."""
    if tokens <= content:
        return [0]
    last = tokens - content
    starts = list(range(0, last, stride))
    starts.append(last)
    if len(starts) <= max_windows:
        return starts
    if max_windows <= 1:
        return [0]
    step = last / (max_windows - 1)
    return [round(i * step) for i in range(max_windows)]


class WindowTokenizer:
    """A `tokenizers.Tokenizer` that produces model windows (see module docstring)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, window_stride: int) -> None:
        padding = tokenizer.padding
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self.prefix, self.suffix = _special_affixes(tokenizer)
        self.max_length = max_length
        self.content = max_length - len(self.prefix) - len(self.suffix)
        if self.content < 1:
            raise ValueError(f"max_length {max_length} leaves no room next to the special tokens")
        self.stride = max(1, min(window_stride, self.content))
        self.pad_id = _pad_id(tokenizer, padding)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int, window_stride: int) -> WindowTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_length, window_stride)

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def encode(
        self, texts: list[str], truncation: Truncation = "window", max_windows: int = 16
    ) -> list[EncodedText]:
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, not {truncation!r}")
        if max_windows < 1:
            raise ValueError("max_windows must be at least 1")
        if len(texts) <= SEQUENTIAL_UP_TO:  # rayon's thread pool costs more than it saves here
            encodings = [self._tokenizer.encode(t, add_special_tokens=False) for t in texts]
        else:
            encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out: list[EncodedText] = []
        for index, encoding in enumerate(encodings):
            ids = encoding.ids
            n = len(ids)
            if n > self.content and truncation == "reject":
                raise TextTooLong(index, n, self.content)
            windows_allowed = 1 if truncation == "head" else max_windows
            starts = window_starts(n, self.content, self.stride, windows_allowed)
            windows = [self.prefix + ids[s : s + self.content] + self.suffix for s in starts]
            out.append(EncodedText(windows=windows, tokens=n))
        return out

    def weight(self, window: list[int]) -> int:
        """Content tokens of a window (at least 1, so an empty text still counts)."""
        return max(1, len(window) - self.specials)


def _special_affixes(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Special ids the post-processor puts before and after a single sequence."""
    probe = "hello world"
    plain = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError("cannot locate the text between the tokenizer's special tokens")


def _pad_id(tokenizer: Tokenizer, padding: dict | None) -> int:
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
