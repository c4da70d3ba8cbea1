"""Hashing a request into table rows: what the model's embedding tables are indexed by.

Glossary: n history events (at most the model's history_seq_len after truncation), m
candidates, U / I / Au hashes per user / post / author id, A actions.

`encode` works column by column from `request.columns.COLUMNS`: a column with a `table`
hashes its raw id column into that table's rows, the others are copied in their dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from request.columns import SCHEMA, EncodedRequest, ModelShape, Part, Schema
from request.hashing import TableRows, hash_ids
from request.raw import RawRequest

__all__ = ["EncodedRequest", "encode", "hash_segments", "model_inputs"]


def encode(
    raw: RawRequest, config: ModelShape, rows: TableRows, schema: Schema = SCHEMA
) -> EncodedRequest:
    """Hash a (validated) request's ids and keep its newest `history_seq_len` events.

    All ids of the request are hashed in one vectorised pass (user, history posts and
    authors, candidate posts and authors side by side, each with its own table's modulus):
    a few dozen numpy calls per request instead of a few dozen per column.
    """
    keep = slice(max(0, raw.num_history - config.history_seq_len), None)
    features = {}
    for c in schema.columns:
        value = getattr(raw, c.source)
        if c.part is Part.USER:  # one row: [1] while hashing
            value = np.array([value], np.uint64 if c.table else c.dtype)
        features[c.source] = value[keep] if c.part is Part.HISTORY else value
    arrays = model_inputs(features, config, rows, schema)
    for c in schema.columns:
        if c.part is Part.USER:
            arrays[c.name] = arrays[c.name][0]
    return schema.request(arrays)


def model_inputs(features: Mapping[str, np.ndarray], config: ModelShape, rows: TableRows,
                 schema: Schema = SCHEMA) -> dict[str, np.ndarray]:  # fmt: skip
    """Raw features by name, of any leading shape [...] (one request's [n] or [m], or a
    dataset's [N, S]), as the model inputs they become: ids hashed into their table's rows
    [..., k] (all in one pass), the others cast to the input's dtype."""
    hashed = [c for c in schema.columns if c.table is not None]
    ids = [np.asarray(features[c.source]) for c in hashed]
    segments = [(x.ravel(), c.row_shape(config)[0], getattr(rows, c.table))
                for x, c in zip(ids, hashed, strict=True)]  # fmt: skip
    arrays = {
        c.name: r if x.ndim == 1 else r.reshape(*x.shape, r.shape[1])
        for c, x, r in zip(hashed, ids, hash_segments(segments), strict=True)
    }
    for c in schema.columns:
        if c.table is None:
            arrays[c.name] = np.ascontiguousarray(features[c.source], dtype=c.dtype)
    return arrays


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
