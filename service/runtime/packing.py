"""Splitting windows into padded micro-batches by cost (longest window x count)."""

from __future__ import annotations

from collections.abc import Sequence


def padded_cost(lengths: Sequence[int]) -> int:
    """Tokens one forward over these windows computes once padded to the longest."""
    return max(lengths, default=0) * len(lengths)


def micro_batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Indices into `lengths`, sorted by length, cut into groups whose padded cost stays
    within `max_tokens` and whose size within `max_size` (a single longer window still
    gets a group of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending: the window being added is the longest of the group
        if current and (len(current) >= max_size or lengths[i] * (len(current) + 1) > max_tokens):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups
