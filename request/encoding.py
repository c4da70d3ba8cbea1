"""Hashing a request into table rows: what the model's embedding tables are indexed by.

Glossary: n history events (at most the model's history_seq_len after truncation), m
candidates, U / I / Au hashes per user / post / author id, A actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.config import PhoenixModelConfig, TableRows
from model.hashing import hash_ids
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
    """Hash a (validated) request's ids and keep its newest `history_seq_len` events.

    All ids of the request are hashed in one vectorised pass (user, history posts and
    authors, candidate posts and authors side by side, each with its own table's modulus):
    a few dozen numpy calls per request instead of a few dozen per column.
    """
    h = config.hash_config
    keep = slice(max(0, raw.num_history - config.history_seq_len), None)
    segments = (
        (np.array([raw.user_id], np.uint64), h.num_user_hashes, rows.user),
        (raw.history_post_ids[keep], h.num_item_hashes, rows.post),
        (raw.history_author_ids[keep], h.num_author_hashes, rows.author),
        (raw.candidate_post_ids, h.num_item_hashes, rows.post),
        (raw.candidate_author_ids, h.num_author_hashes, rows.author),
    )
    user, hist_post, hist_author, cand_post, cand_author = hash_segments(segments)
    return EncodedRequest(
        user_rows=user[0],
        history_post_rows=hist_post,
        history_author_rows=hist_author,
        history_actions=np.ascontiguousarray(raw.history_actions[keep], dtype=np.uint8),
        history_surface=raw.history_surface[keep].astype(np.int32),
        candidate_post_rows=cand_post,
        candidate_author_rows=cand_author,
        candidate_surface=raw.candidate_surface.astype(np.int32),
    )


def hash_segments(segments) -> list[np.ndarray]:
    """`hash_rows(ids, hashes, rows)` of each (ids, hashes, rows) segment, computed at once.

    Equal to hashing each segment alone (tests/request/test_encoding.py): hash k of an id does
    not depend on how many hashes are taken, so every id gets the largest count and each
    segment keeps its first `hashes` columns.
    """
    width = max(k for _, k, _ in segments)
    ids = np.concatenate([np.asarray(x, np.uint64) for x, _, _ in segments])
    moduli = np.repeat(
        np.array([r - 1 for _, _, r in segments], np.uint64), [len(x) for x, _, _ in segments]
    )
    for _, _, r in segments:
        if not 2 <= r <= np.iinfo(np.int32).max:
            raise ValueError(f"hash table rows must be in [2, 2**31), got {r}")
    table_rows = (hash_ids(ids, width) % moduli[:, None] + np.uint64(1)).astype(np.int32)
    out, start = [], 0
    for x, k, _ in segments:
        out.append(table_rows[start : start + len(x), :k])
        start += len(x)
    return out
