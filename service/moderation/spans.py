"""Evidence spans by occlusion: mask a word or a short phrase, re-score, measure the drop.

Units are words with character offsets (code points), found without a tokenizer so they are
meaningful to people: runs of letters, marks and digits (with in-word symbols such as the
asterisk of an obfuscated swear word), one unit per emoji cluster (ZWJ sequences, skin tones,
flags, keycaps) and one per CJK character. Combining characters stay with their base.

All masked variants of a text go to the scorer in one call (the same dynamic batcher that
scored the text), at most `max_variants` per text; texts with more words than that are first
scored in coarse chunks and then word by word inside the chunks that matter.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wacht.service.moderation.outcomes import SpanOutcome

# Scores each text, returning canonical category -> score per text.
Rescore = Callable[[list[str]], Awaitable[list[dict[str, float]]]]

TRIM = set(".,;:!?\"'()[]{}<>«»“”‘’„‚…·-–—、。，！？：；（）「」『』【】")
EPS = 1e-6


@dataclass(frozen=True)
class Unit:
    begin: int
    end: int


@dataclass(frozen=True)
class SpanConfig:
    max_variants: int = 48  # extra texts scored per flagged text, both stages together
    max_phrase: int = 3  # words per phrase candidate
    top_k: int = 3  # spans per category
    min_drop: float = 0.01  # minimum probability drop for a span to be reported
    relative_drop: float = 0.25  # later spans need this share of the top span's drop
    phrase_gain: float = 0.5  # logit drop a phrase must add over its best part to win
    phrase_prob_gain: float = 0.1  # ... and probability drop, as a share of the text's score
    coarse_share: float = 0.67  # of the budget, for the coarse stage on long texts
    segment_units: int = 96  # words per segment of a text longer than that (~1 window)
    segment_overlap: int = 8
    mask: str = ""  # what replaces a masked unit: "" deletes it


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x3FFFF
        or 0xF900 <= cp <= 0xFAFF
        or 0x3040 <= cp <= 0x30FF
        or 0x31F0 <= cp <= 0x31FF
        or 0xFF66 <= cp <= 0xFF9D
    )


def _is_regional(cp: int) -> bool:
    return 0x1F1E6 <= cp <= 0x1F1FF


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cp = ord(ch)
    if _is_cjk(cp):
        return "cjk"
    category = unicodedata.category(ch)
    if (
        category[0] == "M"
        or cp == 0x200D
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0020 <= cp <= 0xE007F
        or 0x1F3FB <= cp <= 0x1F3FF
    ):
        return "extend"
    if category == "So" or _is_regional(cp):
        return "symbol"
    if category[0] in "CZ":
        return "space"
    return "word"


def word_units(text: str) -> list[Unit]:
    """Words, emoji clusters and CJK characters of `text`, in order, as code-point ranges."""
    units: list[list] = []  # [begin, end, kind, joinable]
    current: list | None = None
    for i, ch in enumerate(text):
        kind = _kind(ch)
        if kind == "space":
            current = None
        elif kind == "extend":
            if current is None and units and units[-1][1] == i:
                current = units[-1]
            if current is None:
                current = [i, i + 1, "word", False]
                units.append(current)
            current[1] = i + 1
            current[3] = ord(ch) == 0x200D
        elif kind == "cjk":
            current = [i, i + 1, "cjk", False]
            units.append(current)
        elif kind == "symbol":
            joins = (
                current is not None
                and current[2] == "symbol"
                and (
                    current[3]
                    or (
                        _is_regional(ord(ch))
                        and current[1] - current[0] == 1
                        and _is_regional(ord(text[current[0]]))
                    )
                )
            )
            if joins and current is not None:
                current[1] = i + 1
                current[3] = False
            else:
                current = [i, i + 1, "symbol", False]
                units.append(current)
        else:
            if current is not None and current[2] == "word":
                current[1] = i + 1
            else:
                current = [i, i + 1, "word", False]
                units.append(current)
    out: list[Unit] = []
    for begin, end, kind, _ in units:
        if kind == "word":
            while begin < end and text[begin] in TRIM:
                begin += 1
            while end > begin and text[end - 1] in TRIM:
                end -= 1
        if begin < end:
            out.append(Unit(begin, end))
    return out


def byte_offsets(text: str) -> list[int]:
    """UTF-8 byte offset of every code-point index 0..len(text)."""
    offsets = [0] * (len(text) + 1)
    total = 0
    for i, ch in enumerate(text):
        total += len(ch.encode("utf-8", "surrogatepass"))
        offsets[i + 1] = total
    return offsets


def _logit(p: float) -> float:
    p = min(max(p, EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class _Candidate:
    first: int  # unit index, inclusive
    last: int  # unit index, exclusive

    @property
    def size(self) -> int:
        return self.last - self.first


def _masked(text: str, units: list[Unit], cand: _Candidate, mask: str = "") -> str:
    begin, end = units[cand.first].begin, units[cand.last - 1].end
    return text[:begin] + mask + text[end:]


def _fine_candidates(first: int, last: int, max_phrase: int, budget: int) -> list[_Candidate]:
    """Words, then phrases of 2..max_phrase words, in [first, last), at most `budget`."""
    out = []
    for size in range(1, max_phrase + 1):
        layer = [_Candidate(i, i + size) for i in range(first, last - size + 1)]
        if len(out) + len(layer) > budget:
            if size == 1:
                out.extend(layer[:budget])
            break
        out.extend(layer)
    return out


def _chunks(n: int, budget: int) -> list[_Candidate]:
    size = math.ceil(n / max(1, budget))
    return [_Candidate(i, min(n, i + size)) for i in range(0, n, size)]


async def find_spans(
    text: str,
    base: dict[str, float],
    rescore: Rescore,
    config: SpanConfig = SpanConfig(),
) -> tuple[list[SpanOutcome], int]:
    """Spans of `text` driving each category in `base` (category -> score of the whole text).

    Returns the spans (per category best first, categories in `base` order) and how many masked
    variants were scored. A text longer than `segment_units` words (several model windows) is
    cut into overlapping segments, each scored alone; occlusion then runs inside the segment
    that scores highest for a category, so no variant costs more than about one window.
    """
    units = word_units(text)
    if not units or not base:
        return [], 0
    offsets = byte_offsets(text)
    if len(units) <= config.segment_units:
        found, variants = await _occlude(text, units, base, rescore, config, config.max_variants)
        return _outcomes(text, offsets, found, 0, base), variants
    # At most half the budget on segments: very long texts get longer segments.
    size = max(config.segment_units, math.ceil(len(units) / max(1, config.max_variants // 2)))
    step = size - config.segment_overlap
    bounds = [
        (first, min(len(units), first + size))
        for first in range(0, len(units) - config.segment_overlap, step)
    ]
    pieces = [text[units[a].begin:units[b - 1].end] for a, b in bounds]
    scores = await rescore(pieces)
    variants = len(pieces)
    groups: dict[int, dict[str, float]] = {}
    for category in base:
        best = max(range(len(pieces)), key=lambda i, c=category: scores[i][c])
        groups.setdefault(best, {})[category] = scores[best][category]
    budget = max(len(groups), config.max_variants - variants) // len(groups)
    found: list[tuple[str, int, int, float]] = []
    for index, categories in groups.items():
        piece = pieces[index]
        shift = units[bounds[index][0]].begin
        local, used = await _occlude(
            piece, word_units(piece), categories, rescore, config, max(1, budget)
        )
        variants += used
        found.extend((c, b + shift, e + shift, d) for c, b, e, d in local)
    return _outcomes(text, offsets, found, 0, base), variants


def _outcomes(
    text: str,
    offsets: list[int],
    found: list[tuple[str, int, int, float]],
    shift: int,
    base: dict[str, float],
) -> list[SpanOutcome]:
    order = {category: i for i, category in enumerate(base)}
    ranked = sorted(enumerate(found), key=lambda item: (order[item[1][0]], item[0]))
    return [
        SpanOutcome(
            category=category,
            begin=begin + shift,
            end=end + shift,
            byte_begin=offsets[begin + shift],
            byte_end=offsets[end + shift],
            score=round(drop, 6),
            text=text[begin + shift:end + shift],
        )
        for _, (category, begin, end, drop) in ranked
    ]


async def _occlude(
    text: str,
    units: list[Unit],
    base: dict[str, float],
    rescore: Rescore,
    config: SpanConfig,
    budget: int,
) -> tuple[list[tuple[str, int, int, float]], int]:
    """(category, begin, end, drop) per span, best first per category; variants scored."""
    n = len(units)
    measured: dict[_Candidate, dict[str, float]] = {}
    fine = _fine_candidates(0, n, config.max_phrase, budget)
    if len(fine) >= n:
        candidates = fine
    else:
        coarse_budget = max(2, int(budget * config.coarse_share))
        chunks = _chunks(n, coarse_budget)
        scores = await rescore([_masked(text, units, c, config.mask) for c in chunks])
        measured.update(zip(chunks, scores, strict=True))
        budget = max(0, budget - len(chunks))
        focus: list[_Candidate] = []
        for category in base:
            best = max(chunks, key=lambda c, cat=category: base[cat] - measured[c][cat])
            if best not in focus:
                focus.append(best)
        candidates = []
        per_focus = max(1, budget // len(focus))
        for chunk in focus:
            candidates.extend(
                _fine_candidates(chunk.first, chunk.last, config.max_phrase, per_focus)
            )
        candidates = candidates[:budget]
    if candidates:
        scores = await rescore([_masked(text, units, c, config.mask) for c in candidates])
        measured.update(zip(candidates, scores, strict=True))
    found = []
    for category, score in base.items():
        for cand, drop in _select(measured, category, score, config):
            found.append((category, units[cand.first].begin, units[cand.last - 1].end, drop))
    return found, len(measured)


def _select(
    measured: dict[_Candidate, dict[str, float]],
    category: str,
    base: float,
    config: SpanConfig,
) -> list[tuple[_Candidate, float]]:
    """Best non-overlapping candidates for one category, adjacent winners merged."""
    base_logit = _logit(base)
    logit_drop = {c: base_logit - _logit(s[category]) for c, s in measured.items()}
    prob_drop = {c: base - s[category] for c, s in measured.items()}
    single = {c.first: d for c, d in logit_drop.items() if c.size == 1}
    best_single = max(single.values(), default=0.0)

    def admissible(cand: _Candidate) -> bool:
        if prob_drop[cand] < config.min_drop or logit_drop[cand] <= 0:
            return False
        inner = [single[i] for i in range(cand.first, cand.last) if i in single]
        if cand.size == 1 or not inner:
            return True  # a word, or a coarse chunk nobody looked inside
        if any(i not in single for i in range(cand.first, cand.last)):
            return False  # a chunk that was refined: its words speak for it
        # A phrase wins over its parts when masking it whole does clearly more than masking its
        # best measured part (redundant words like "stupid idiot"), or when every word in it
        # drives the score on its own (adjacent high words).
        parts = [
            c for c in measured if cand.first <= c.first and c.last <= cand.last and c != cand
        ]
        logit_gain = logit_drop[cand] - max(logit_drop[c] for c in parts)
        prob_gain = prob_drop[cand] - max(prob_drop[c] for c in parts)
        if logit_gain >= config.phrase_gain and prob_gain >= config.phrase_prob_gain * base:
            return True
        return best_single > 0 and min(inner) >= 0.5 * best_single

    ranked = sorted(
        (c for c in measured if admissible(c)),
        key=lambda c: (logit_drop[c], -c.size),
        reverse=True,
    )
    chosen: list[_Candidate] = []
    taken: set[int] = set()
    for cand in ranked:
        if len(chosen) == config.top_k:
            break
        if chosen and prob_drop[cand] < config.relative_drop * prob_drop[chosen[0]]:
            break
        span = set(range(cand.first, cand.last))
        if span & taken:
            continue
        chosen.append(cand)
        taken |= span
    merged: list[_Candidate] = []
    for cand in sorted(chosen, key=lambda c: c.first):
        if merged and merged[-1].last == cand.first:
            merged[-1] = _Candidate(merged[-1].first, cand.last)
        else:
            merged.append(cand)
    out = []
    for cand in merged:
        parts = [c for c in chosen if cand.first <= c.first and c.last <= cand.last]
        # A merged phrase scores at least as much as its best part (masking the whole phrase
        # can drop less than masking a part when the model reads the rest differently).
        drop = max([prob_drop.get(cand, 0.0)] + [prob_drop[c] for c in parts])
        rank = max([logit_drop.get(cand, 0.0)] + [logit_drop[c] for c in parts])
        out.append((cand, max(0.0, drop), rank))
    out.sort(key=lambda item: item[2], reverse=True)
    return [(cand, drop) for cand, drop, _ in out]
