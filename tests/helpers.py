"""Request builders shared by the model and server tests."""

from __future__ import annotations

import numpy as np

from request.actions import NUM_ACTIONS
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
    """Uniformly random 64-bit ids, actions and surfaces (surfaces < 16)."""

    def ids(n: int) -> np.ndarray:
        return rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)

    return RawRequest(
        user_id=int(ids(1)[0]),
        history_post_ids=ids(history),
        history_author_ids=ids(history),
        history_actions=(rng.random((history, NUM_ACTIONS)) < 0.15).astype(np.uint8),
        history_surface=rng.integers(0, 16, size=history),
        candidate_post_ids=ids(candidates),
        candidate_author_ids=ids(candidates),
        candidate_surface=rng.integers(0, 16, size=candidates),
        request_id=request_id,
    )


def with_candidates(request: RawRequest, index) -> RawRequest:
    """The same user and history with candidates `index` of `request` (any order, repeats)."""
    index = np.asarray(index, dtype=np.int64)
    return RawRequest(
        user_id=request.user_id,
        history_post_ids=request.history_post_ids,
        history_author_ids=request.history_author_ids,
        history_actions=request.history_actions,
        history_surface=request.history_surface,
        candidate_post_ids=request.candidate_post_ids[index],
        candidate_author_ids=request.candidate_author_ids[index],
        candidate_surface=request.candidate_surface[index],
        request_id=request.request_id,
    )


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
