"""Windows over tokens: coverage, the max_windows cap, specials from the post-processor."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from wacht.service.runtime.tokenize import TextTooLong, WindowTokenizer, window_starts

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "minilm-moderation"


def covered(tokens: int, content: int, starts: list[int]) -> set[int]:
    return {t for s in starts for t in range(s, min(s + content, tokens))}


@pytest.mark.parametrize("tokens", [1, 10, 11, 25, 100, 257])
def test_windows_cover_every_token_and_end_at_the_end(tokens):
    starts = window_starts(tokens, content=10, stride=7, max_windows=1000)
    assert covered(tokens, 10, starts) == set(range(tokens))
    assert starts[0] == 0
    assert starts[-1] == max(0, tokens - 10)
    assert all(b - a <= 7 for a, b in zip(starts, starts[1:], strict=False))


def test_cap_spreads_windows_over_the_whole_text():
    starts = window_starts(100, content=10, stride=5, max_windows=10)
    assert len(starts) == 10
    assert starts[0] == 0 and starts[-1] == 90
    assert covered(100, 10, starts) == set(range(100))  # 100 <= 10 windows * 10


def test_cap_beyond_coverage_keeps_head_and_tail_with_gaps_between():
    starts = window_starts(1000, content=10, stride=5, max_windows=4)
    assert starts == [0, 330, 660, 990]
    seen = covered(1000, 10, starts)
    assert {0, 9, 990, 999} <= seen and 500 not in seen


def test_single_window_cap_is_the_head():
    assert window_starts(100, content=10, stride=5, max_windows=1) == [0]


def roberta_like() -> Tokenizer:
    """A word-level tokenizer whose specials are not BERT's ids."""
    vocab = {"<pad>": 7, "<s>": 3, "</s>": 4, "<unk>": 5}
    vocab.update({f"w{i}": 10 + i for i in range(50)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 3), ("</s>", 4)]
    )
    tok.enable_padding(pad_id=7, pad_token="<pad>", length=16)
    tok.enable_truncation(8)
    return tok


def test_specials_and_pad_come_from_the_tokenizer_not_bert_ids():
    wt = WindowTokenizer(roberta_like(), max_length=6, window_stride=2)
    assert (wt.prefix, wt.suffix, wt.pad_id, wt.content) == ([3], [4], 7, 4)
    [short] = wt.encode(["w1 w2"])
    assert short.windows == [[3, 11, 12, 4]]  # the file's fixed padding is off


def test_long_text_windows_with_file_truncation_off():
    wt = WindowTokenizer(roberta_like(), max_length=6, window_stride=2)
    text = " ".join(f"w{i}" for i in range(11))
    [enc] = wt.encode([text])
    assert enc.tokens == 11  # the file's truncation at 8 is off
    assert [w[1:-1] for w in enc.windows] == [
        [10, 11, 12, 13],
        [12, 13, 14, 15],
        [14, 15, 16, 17],
        [16, 17, 18, 19],
        [17, 18, 19, 20],
    ]
    assert all(w[0] == 3 and w[-1] == 4 for w in enc.windows)
    [head] = wt.encode([text], truncation="head")
    assert head.windows == [[3, 10, 11, 12, 13, 4]] and head.tokens == 11
    [capped] = wt.encode([text], max_windows=2)
    assert [w[1:-1] for w in capped.windows] == [[10, 11, 12, 13], [17, 18, 19, 20]]


def test_reject_names_the_long_text():
    wt = WindowTokenizer(roberta_like(), max_length=6, window_stride=2)
    with pytest.raises(TextTooLong) as err:
        wt.encode(["w1", "w1 w2 w3 w4", "w1 w2 w3 w4 w5"], truncation="reject")
    assert (err.value.index, err.value.tokens, err.value.limit) == (2, 5, 4)


def test_unknown_truncation_mode_is_refused():
    wt = WindowTokenizer(roberta_like(), max_length=6, window_stride=2)
    with pytest.raises(ValueError):
        wt.encode(["w1"], truncation="middle")  # type: ignore[arg-type]


def test_real_tokenizer_file_has_padding_and_truncation_switched_off():
    if not (MODEL_DIR / "tokenizer.json").is_file():
        pytest.skip(f"{MODEL_DIR} is absent (the default model is not committed yet)")
    wt = WindowTokenizer.from_file(MODEL_DIR / "tokenizer.json", 256, 192)
    plain = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    assert wt.prefix + wt.suffix == plain.encode("", add_special_tokens=True).ids[:2]
    [short, long] = wt.encode(["hello", "hello world " * 300])
    assert len(short.windows) == 1 and len(short.windows[0]) == 3
    assert long.tokens == 600
    assert all(len(w) <= 256 for w in long.windows) and len(long.windows) == 3
