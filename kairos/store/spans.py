"""Spans of rows, [start, end) pairs in ascending order: which of a merged user's rows
each merged-in user brought. Moving a user re-numbers its rows, so spans are carried
through an export as positions in the exported event list and turned back into rows
where the events land."""

from __future__ import annotations

import numpy as np

Span = tuple[int, int]


def rows_to_positions(spans: list[Span], rows: np.ndarray) -> list[Span]:
    """Spans of rows -> spans of positions in `rows` (ascending), dropping empty ones."""
    out: list[Span] = []
    for start, end in spans:
        first, last = int(np.searchsorted(rows, start)), int(np.searchsorted(rows, end))
        if last > first:
            out.append((first, last))
    return out


def shift(spans: list[Span], offset: int) -> list[Span]:
    return [(start + offset, end + offset) for start, end in spans]


def complement(spans: list[Span], start: int, end: int) -> list[Span]:
    """The parts of [start, end) that no span covers."""
    out: list[Span] = []
    at = start
    for a, b in sorted(spans):
        if a > at:
            out.append((at, min(a, end)))
        at = max(at, b)
    if at < end:
        out.append((at, end))
    return [(a, b) for a, b in out if b > a]


def take(rows: np.ndarray, spans: list[Span]) -> np.ndarray:
    """The rows of `rows` (ascending) that fall in the spans."""
    if not spans:
        return rows[:0]
    keep = np.zeros(rows.size, dtype=bool)
    for start, end in spans:
        keep[np.searchsorted(rows, start):np.searchsorted(rows, end)] = True
    return rows[keep]


def keep(spans: list[Span], kept: np.ndarray) -> list[Span]:
    """Spans of positions after dropping the positions where `kept` is False."""
    before = np.concatenate(([0], np.cumsum(kept)))  # kept positions before each position
    out = [(int(before[a]), int(before[b])) for a, b in spans]
    return [(a, b) for a, b in out if b > a]
