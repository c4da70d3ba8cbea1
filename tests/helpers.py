"""Request builders shared by the model and server tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from request.actions import NUM_ACTIONS
from request.features import FEATURES, Kind, Part, of_part
from request.raw import RawRequest
from server.config import ServerConfig, ShapeConfig


def runner_config(
    max_batch_size: int,
    candidate_buckets: tuple[int, ...],
    history_buckets: tuple[int, ...] | None = None,
    prefix_cache_bytes: int = 0,
) -> ServerConfig:
    """The settings a ModelRunner reads, for a small plan (no cross-request prefix reuse
    unless `prefix_cache_bytes` is given)."""
    shapes = ShapeConfig(max_batch_size=max_batch_size, candidate_buckets=candidate_buckets,
                         history_buckets=history_buckets)  # fmt: skip
    return ServerConfig(shapes=shapes, prefix_cache_bytes=prefix_cache_bytes)


def random_request(
    rng: np.random.Generator, history: int, candidates: int, request_id: str = ""
) -> RawRequest:
    """Every feature (`request.features`) uniformly random: 64-bit ids, actions (each taken
    with probability 0.15) and indices below 16."""
    count = {Part.USER: None, Part.HISTORY: history, Part.CANDIDATE: candidates}
    fields = {}
    for f in FEATURES:
        n = count[f.part]
        if f.kind is Kind.ID:
            ids = rng.integers(
                0, 2**64 - 1, size=1 if n is None else n, dtype=np.uint64, endpoint=True
            )
            fields[f.name] = int(ids[0]) if n is None else ids
        elif f.kind is Kind.ACTIONS:
            fields[f.name] = (rng.random((n, NUM_ACTIONS)) < 0.15).astype(np.uint8)
        else:
            fields[f.name] = rng.integers(0, 16, size=n)
    return RawRequest(**fields, request_id=request_id)


def with_candidates(request: RawRequest, index) -> RawRequest:
    """The same user and history with candidates `index` of `request` (any order, repeats)."""
    index = np.asarray(index, dtype=np.int64)
    picked = {f.name: getattr(request, f.name)[index] for f in of_part(Part.CANDIDATE)}
    return dataclasses.replace(request, **picked)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The reference sigmoid, in float64: what probabilities are held to."""
    return 1 / (1 + np.exp(-np.asarray(logits, np.float64)))


def varint(value: int) -> bytes:
    """A protobuf base-128 varint, written by hand (independent of the code under test)."""
    value &= 2**64 - 1  # negative int32 enums are sign-extended to 10 bytes
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
