"""Requests in raw ids, their hashed encoding, and packing encoded requests into batches.

Glossary: n history events (<= S = history_seq_len after truncation), m candidates,
U / I / Au hashes per user / post / author id, A actions, B batch rows, S' / C' history and
candidate slots of a batch.

    RawRequest    ids as uint64 columns, straight from a client (or a JSON file)
    EncodedRequest  the same request hashed into table rows, history cut to the newest S
    pack_rows     (encoded request, candidate range) pieces -> one padded RankingBatch

Everything here is numpy on the host: it is what a server does for the next batch while the
accelerator runs the current one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.actions import ACTIONS, NUM_ACTIONS, action_index
from model.config import PhoenixModelConfig
from model.embeddings import TableRows
from model.hashing import hash_rows
from model.ranker import RankingBatch

UINT64_MAX = 2**64 - 1


class RequestError(ValueError):
    """A request the model cannot score; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, eq=False)
class RawRequest:
    """One ranking request in raw ids. History is oldest first; candidates in request order."""

    user_id: int
    history_post_ids: np.ndarray  # uint64 [n]
    history_author_ids: np.ndarray  # uint64 [n]
    history_actions: np.ndarray  # uint8 [n, A], multi-hot over ACTIONS
    history_surface: np.ndarray  # int64 [n], product surface index
    candidate_post_ids: np.ndarray  # uint64 [m]
    candidate_author_ids: np.ndarray  # uint64 [m]
    candidate_surface: np.ndarray  # int64 [m]
    request_id: str = ""

    @property
    def num_candidates(self) -> int:
        return len(self.candidate_post_ids)

    @property
    def num_history(self) -> int:
        return len(self.history_post_ids)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RawRequest:
        """From the JSON layout of the parity fixture: actions by name, ids as integers."""
        history = data.get("history", [])
        candidates = data.get("candidates", [])
        actions = np.zeros((len(history), NUM_ACTIONS), dtype=np.uint8)
        for i, event in enumerate(history):
            for name in event.get("actions", []):
                try:
                    actions[i, action_index(name)] = 1
                except ValueError as e:
                    raise RequestError(f"history[{i}].actions", str(e)) from None
        return cls(
            user_id=_uint64(data.get("user_id"), "user_id"),
            history_post_ids=_ids(history, "post_id", "history"),
            history_author_ids=_ids(history, "author_id", "history"),
            history_actions=actions,
            history_surface=np.array([e.get("product_surface", 0) for e in history], np.int64),
            candidate_post_ids=_ids(candidates, "post_id", "candidates"),
            candidate_author_ids=_ids(candidates, "author_id", "candidates"),
            candidate_surface=np.array([c.get("product_surface", 0) for c in candidates], np.int64),
            request_id=str(data.get("request_id", "")),
        )

    def history_rows(self) -> Iterator[tuple[int, int, list[int], int]]:
        """(post_id, author_id, indices of the actions taken, product_surface) per event."""
        for p, a, acts, s in zip(
            self.history_post_ids,
            self.history_author_ids,
            self.history_actions,
            self.history_surface,
            strict=True,
        ):
            yield int(p), int(a), np.flatnonzero(acts).tolist(), int(s)

    def candidate_rows(self) -> Iterator[tuple[int, int, int]]:
        """(post_id, author_id, product_surface) per candidate."""
        for p, a, s in zip(
            self.candidate_post_ids, self.candidate_author_ids, self.candidate_surface, strict=True
        ):
            yield int(p), int(a), int(s)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout `from_dict` reads."""
        return {
            "user_id": int(self.user_id),
            "history": [
                {
                    "post_id": p,
                    "author_id": a,
                    "actions": [ACTIONS[j] for j in acts],
                    "product_surface": s,
                }
                for p, a, acts, s in self.history_rows()
            ],
            "candidates": [
                {"post_id": p, "author_id": a, "product_surface": s}
                for p, a, s in self.candidate_rows()
            ],
            "request_id": self.request_id,
        }

    def validate(self, config: PhoenixModelConfig) -> None:
        """Raise RequestError naming the first field the model cannot take."""
        n, m = self.num_history, self.num_candidates
        for name, arr, length in (
            ("history.author_id", self.history_author_ids, n),
            ("history.product_surface", self.history_surface, n),
            ("candidates.author_id", self.candidate_author_ids, m),
            ("candidates.product_surface", self.candidate_surface, m),
        ):
            if len(arr) != length:
                raise RequestError(name, f"has {len(arr)} values for {length} items")
        if self.history_actions.shape != (n, NUM_ACTIONS):
            raise RequestError(
                "history.actions", f"shape {self.history_actions.shape} != ({n}, {NUM_ACTIONS})"
            )
        vocab = config.product_surface_vocab_size
        for where, surfaces in (
            ("history", self.history_surface),
            ("candidates", self.candidate_surface),
        ):
            bad = np.flatnonzero((surfaces < 0) | (surfaces >= vocab))
            if bad.size:
                i = int(bad[0])
                raise RequestError(
                    f"{where}[{i}].product_surface",
                    f"{int(surfaces[i])} is outside the vocabulary [0, {vocab})",
                )


def _uint64(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise RequestError(field, f"must be an integer in [0, 2**64), got {value!r}")
    return value


def _ids(items: Sequence[dict[str, Any]], key: str, where: str) -> np.ndarray:
    return np.array(
        [_uint64(item.get(key), f"{where}[{i}].{key}") for i, item in enumerate(items)],
        dtype=np.uint64,
    )


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
    """Pack pieces into rows 0..len(pieces)-1 of a padded batch [num_rows, S', C']."""
    if len(pieces) > num_rows:
        raise ValueError(f"{len(pieces)} pieces do not fit in {num_rows} rows")
    batch = empty_batch(config, num_rows, history_slots, candidate_slots)
    for r, piece in enumerate(pieces):
        req, n, m = piece.request, piece.request.num_history, piece.stop - piece.start
        if n > history_slots or m > candidate_slots:
            raise ValueError(
                f"row {r} needs {n} history / {m} candidate slots, batch has "
                f"{history_slots} / {candidate_slots}"
            )
        cand = slice(piece.start, piece.stop)
        batch.user_rows[r] = req.user_rows
        batch.history_post_rows[r, :n] = req.history_post_rows
        batch.history_author_rows[r, :n] = req.history_author_rows
        batch.history_actions[r, :n] = req.history_actions
        batch.history_surface[r, :n] = req.history_surface
        batch.candidate_post_rows[r, :m] = req.candidate_post_rows[cand]
        batch.candidate_author_rows[r, :m] = req.candidate_author_rows[cand]
        batch.candidate_surface[r, :m] = req.candidate_surface[cand]
    return batch


def windows(num_candidates: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that cover `num_candidates` in windows of at most `size`."""
    return [(s, min(s + size, num_candidates)) for s in range(0, num_candidates, size)]
