"""Attention masks for ranking: candidate isolation.

Glossary: B batch, T sequence (= P + C), P prefix (1 user token + S history slots),
C candidates. A mask entry of 1 means "the query (row) may attend to the key (column)".

The sequence is `[user, history..., candidates...]` and `candidate_start_offset = P`. User and
history attend causally (or freely, with `history_attention="bidirectional"`); every candidate
attends to all of user+history and to itself, never to another candidate, so a candidate's
logits depend only on the user, the history and that candidate. The padding mask is ANDed on
top of this structure by the caller.
"""

from __future__ import annotations

import jax.numpy as jnp


def make_recsys_attn_mask(
    seq_len: int,
    candidate_start_offset: int,
    dtype: jnp.dtype = jnp.float32,
) -> jnp.ndarray:
    """The reference ranking mask: causal over user+history, candidates isolated.

    Args:
      seq_len: T, total sequence length (user + history + candidates).
      candidate_start_offset: index of the first candidate (1 + history slots).
      dtype: dtype of the returned mask.

    Returns:
      [1, 1, T, T] mask of 0/1 values in `dtype`.
    """
    row = jnp.arange(seq_len)[:, None]  # [T, 1] query index
    col = jnp.arange(seq_len)[None, :]  # [1, T] key index
    causal = col <= row
    candidate_pair = (row >= candidate_start_offset) & (col >= candidate_start_offset)
    allowed = jnp.where(candidate_pair, row == col, causal)  # [T, T]
    return allowed.astype(dtype)[None, None]


def prefix_attn_mask(prefix_len: int, history_attention: str) -> jnp.ndarray:
    """Which user+history tokens each user+history token sees: bool [P, P]."""
    if history_attention == "bidirectional":
        return jnp.ones((prefix_len, prefix_len), dtype=bool)
    if history_attention == "causal":
        return jnp.tril(jnp.ones((prefix_len, prefix_len), dtype=bool))
    raise ValueError(
        f"history_attention must be 'causal' or 'bidirectional', got {history_attention!r}"
    )


def ranking_attn_mask(
    seq_len: int, candidate_start_offset: int, history_attention: str
) -> jnp.ndarray:
    """`make_recsys_attn_mask` with the configured user+history block: bool [1, 1, T, T]."""
    mask = make_recsys_attn_mask(seq_len, candidate_start_offset, dtype=jnp.bool_)
    prefix = prefix_attn_mask(candidate_start_offset, history_attention)
    return mask.at[0, 0, :candidate_start_offset, :candidate_start_offset].set(prefix)
