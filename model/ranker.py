"""Offline scoring with the reference layout: the model's ground truth for every other path.

Every request is laid out as the reference implementation lays it out: history padded to the
model's `history_seq_len`, candidates in windows of `candidate_seq_len` slots, one batch row per
window. The server may pick other shapes (fewer history slots, larger candidate windows); under
right-anchored positions those give the same logits, and the tests hold it to this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model.checkpoint import load_checkpoint
from model.config import PhoenixModelConfig
from model.network import make_forward
from model.tables import dequantized
from request.encoding import encode
from request.hashing import TableRows
from request.layout import Piece, pack_rows, windows
from request.raw import RawRequest


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class Ranker:
    """Scores `RawRequest`s with one jitted forward pass per call."""

    def __init__(
        self,
        params,
        config: PhoenixModelConfig,
        dtype: jnp.dtype | None = None,
        attention: str = "isolated",
    ):
        self.config = config
        self.rows = TableRows.of_params(params)
        self.params = jax.device_put(dequantized(params))  # the haiku model reads float32
        self._apply = jax.jit(make_forward(config, self.rows, dtype, attention).apply)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> Ranker:
        ckpt = load_checkpoint(path)
        return cls(ckpt.state.params, ckpt.config, **kwargs)

    def logits(self, request: RawRequest) -> np.ndarray:
        """float32 [m, A] logits of one request's candidates, in request order."""
        return self.logits_many([request])[0]

    def logits_many(self, requests: Sequence[RawRequest]) -> list[np.ndarray]:
        """Score several requests in one forward pass (their windows are batch rows)."""
        c = self.config
        pieces = []
        for request in requests:
            request.validate(c)
            encoded = encode(request, c, self.rows)
            pieces += [
                Piece(encoded, s, e)
                for s, e in windows(request.num_candidates, c.candidate_seq_len)
            ]
        if not pieces:
            return [np.zeros((0, c.num_actions), np.float32) for _ in requests]
        num_rows = _next_power_of_two(len(pieces))  # bounded set of compiled shapes
        batch = pack_rows(c, pieces, num_rows, c.history_seq_len, c.candidate_seq_len)
        out = np.asarray(self._apply(self.params, batch))  # [rows, C, A]
        rows = iter(range(len(pieces)))
        results = []
        for request in requests:
            parts = [
                out[next(rows), : e - s]
                for s, e in windows(request.num_candidates, c.candidate_seq_len)
            ]
            results.append(
                np.concatenate(parts) if parts else np.zeros((0, c.num_actions), np.float32)
            )
        return results
