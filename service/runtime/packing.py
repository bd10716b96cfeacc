"""Splitting windows into padded micro-batches by cost (longest window x count)."""

from __future__ import annotations

from collections.abc import Sequence


def padded_cost(lengths: Sequence[int]) -> int:
    """Tokens one forward over these windows computes once padded to the longest."""
    return max(lengths, default=0) * len(lengths)


def micro_batches(
    lengths: Sequence[int], max_tokens: int, max_size: int, max_padding: float = 1.0
) -> list[list[int]]:
    """Indices into `lengths`, sorted by length, cut into groups whose padded cost stays
    within `max_tokens`, whose size within `max_size` and whose padding within
    `max_padding` of the padded cost (a single longer window still gets a group of its
    own). A window that would push its group past a bound starts the next group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # sorted ascending: the window being added is the longest of the group
        padded = lengths[i] * (len(current) + 1)
        if current and (
            len(current) >= max_size
            or padded > max_tokens
            or padded - (real + lengths[i]) > max_padding * padded
        ):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        groups.append(current)
    return groups
