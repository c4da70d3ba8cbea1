"""Batch layout: windows of candidates, pieces, and packing pieces into a padded batch.

Glossary: B batch rows, S history slots, C candidate slots per row (one window), n / m a
request's history events / candidates.

A request with m candidates is split into windows of at most C candidates (`windows`); each
window with the request's user and history is one piece, one row of a batch. `pack_rows` pads
pieces into a `RankingBatch` of shape [B, S, C] (its arrays: `request.columns`). numpy only:
this is host work that overlaps the device's current batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from request.columns import SCHEMA, EncodedRequest, ModelShape, RankingBatch

__all__ = [
    "Piece", "RankingBatch", "empty_batch", "fill_candidates", "fill_prefix", "pack_rows",
    "windows",
]  # fmt: skip


def empty_batch(
    config: ModelShape, num_rows: int, history_slots: int, candidate_slots: int
) -> RankingBatch:
    """An all-padding numpy batch of the given shape."""
    return SCHEMA.empty_batch(SCHEMA.layout(config), num_rows, history_slots, candidate_slots)


def fill_prefix(batch, row: int, request: EncodedRequest) -> None:
    """Write a request's user and history into row `row` (its n history slots first)."""
    SCHEMA.fill_prefix(batch, row, request)


def fill_candidates(batch, row: int, piece: Piece) -> None:
    """Write a piece's candidates into the first slots of row `row`."""
    SCHEMA.fill_candidates(batch, row, piece.request, piece.start, piece.stop)


@dataclass(frozen=True)
class Piece:
    """One batch row: a request with candidates [start, stop) of it."""

    request: EncodedRequest
    start: int
    stop: int


def pack_rows(
    config: ModelShape,
    pieces: Sequence[Piece],
    num_rows: int,
    history_slots: int,
    candidate_slots: int,
) -> RankingBatch:
    """Pack pieces into rows 0..len(pieces)-1 of a padded batch [B, S, C]."""
    if len(pieces) > num_rows:
        raise ValueError(f"{len(pieces)} pieces do not fit in {num_rows} rows")
    batch = empty_batch(config, num_rows, history_slots, candidate_slots)
    for r, piece in enumerate(pieces):
        n, m = piece.request.num_history, piece.stop - piece.start
        if n > history_slots or m > candidate_slots:
            raise ValueError(
                f"row {r} needs {n} history / {m} candidate slots, batch has "
                f"{history_slots} / {candidate_slots}"
            )
        fill_prefix(batch, r, piece.request)
        fill_candidates(batch, r, piece)
    return batch


def windows(num_candidates: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that cover `num_candidates` in windows of at most `size`."""
    return [(s, min(s + size, num_candidates)) for s in range(0, num_candidates, size)]
