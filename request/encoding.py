"""Hashing a request into table rows: what the model's embedding tables are indexed by.

Glossary: n history events (at most the model's history_seq_len after truncation), m
candidates, U / I / Au hashes per user / post / author id, A actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.config import PhoenixModelConfig, TableRows
from model.hashing import hash_rows
from request.raw import RawRequest


@dataclass(frozen=True, eq=False)
class EncodedRequest:
    """A request hashed into table rows; history holds the newest S events, oldest first."""

    user_rows: np.ndarray  # int32 [U]
    history_post_rows: np.ndarray  # int32 [n, I]
    history_author_rows: np.ndarray  # int32 [n, Au]
    history_actions: np.ndarray  # uint8 [n, A]
    history_surface: np.ndarray  # int32 [n]
    candidate_post_rows: np.ndarray  # int32 [m, I]
    candidate_author_rows: np.ndarray  # int32 [m, Au]
    candidate_surface: np.ndarray  # int32 [m]

    @property
    def num_history(self) -> int:
        return self.history_post_rows.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.candidate_post_rows.shape[0]


def encode(raw: RawRequest, config: PhoenixModelConfig, rows: TableRows) -> EncodedRequest:
    """Hash a (validated) request's ids and keep its newest `history_seq_len` events."""
    h = config.hash_config
    keep = slice(max(0, raw.num_history - config.history_seq_len), None)
    return EncodedRequest(
        user_rows=hash_rows(np.array([raw.user_id], np.uint64), h.num_user_hashes, rows.user)[0],
        history_post_rows=hash_rows(raw.history_post_ids[keep], h.num_item_hashes, rows.post),
        history_author_rows=hash_rows(
            raw.history_author_ids[keep], h.num_author_hashes, rows.author
        ),
        history_actions=np.ascontiguousarray(raw.history_actions[keep], dtype=np.uint8),
        history_surface=raw.history_surface[keep].astype(np.int32),
        candidate_post_rows=hash_rows(raw.candidate_post_ids, h.num_item_hashes, rows.post),
        candidate_author_rows=hash_rows(raw.candidate_author_ids, h.num_author_hashes, rows.author),
        candidate_surface=raw.candidate_surface.astype(np.int32),
    )
