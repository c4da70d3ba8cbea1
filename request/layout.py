"""Batch layout: windows of candidates, pieces, and packing pieces into a padded batch.

Glossary: B batch rows, S history slots, C candidate slots per row (one window), n / m a
request's history events / candidates, U / I / Au hashes per user / post / author id, A actions.

A request with m candidates is split into windows of at most C candidates (`windows`); each
window with the request's user and history is one piece, one row of a batch. `pack_rows` pads
pieces into a `RankingBatch` of shape [B, S, C]. numpy only: this is host work that overlaps
the device's current batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from model.config import PhoenixModelConfig
from request.encoding import EncodedRequest


class RankingBatch(NamedTuple):
    """Hashed, padded model inputs (numpy on the host, jax.Array inside the forward pass).

    Padding slots hold table row 0, surface 0 and no actions.
    """

    user_rows: Any  # int32 [B, U]
    history_post_rows: Any  # int32 [B, S, I]
    history_author_rows: Any  # int32 [B, S, Au]
    history_actions: Any  # uint8 [B, S, A], multi-hot
    history_surface: Any  # int32 [B, S]
    candidate_post_rows: Any  # int32 [B, C, I]
    candidate_author_rows: Any  # int32 [B, C, Au]
    candidate_surface: Any  # int32 [B, C]


def empty_batch(
    config: PhoenixModelConfig, num_rows: int, history_slots: int, candidate_slots: int
) -> RankingBatch:
    """An all-padding numpy batch of the given shape."""
    h = config.hash_config
    b, s, c = num_rows, history_slots, candidate_slots
    return RankingBatch(
        user_rows=np.zeros((b, h.num_user_hashes), np.int32),
        history_post_rows=np.zeros((b, s, h.num_item_hashes), np.int32),
        history_author_rows=np.zeros((b, s, h.num_author_hashes), np.int32),
        history_actions=np.zeros((b, s, config.num_actions), np.uint8),
        history_surface=np.zeros((b, s), np.int32),
        candidate_post_rows=np.zeros((b, c, h.num_item_hashes), np.int32),
        candidate_author_rows=np.zeros((b, c, h.num_author_hashes), np.int32),
        candidate_surface=np.zeros((b, c), np.int32),
    )


@dataclass(frozen=True)
class Piece:
    """One batch row: a request with candidates [start, stop) of it."""

    request: EncodedRequest
    start: int
    stop: int


def pack_rows(
    config: PhoenixModelConfig,
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


def fill_prefix(batch: RankingBatch, row: int, req: EncodedRequest) -> None:
    """Write a request's user and history into row `row` (its n history slots first)."""
    n = req.num_history
    batch.user_rows[row] = req.user_rows
    batch.history_post_rows[row, :n] = req.history_post_rows
    batch.history_author_rows[row, :n] = req.history_author_rows
    batch.history_actions[row, :n] = req.history_actions
    batch.history_surface[row, :n] = req.history_surface


def fill_candidates(batch: RankingBatch, row: int, piece: Piece) -> None:
    """Write a piece's candidates into the first slots of row `row`."""
    req, m, cand = piece.request, piece.stop - piece.start, slice(piece.start, piece.stop)
    batch.candidate_post_rows[row, :m] = req.candidate_post_rows[cand]
    batch.candidate_author_rows[row, :m] = req.candidate_author_rows[cand]
    batch.candidate_surface[row, :m] = req.candidate_surface[cand]


def windows(num_candidates: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that cover `num_candidates` in windows of at most `size`."""
    return [(s, min(s + size, num_candidates)) for s in range(0, num_candidates, size)]
