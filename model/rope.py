"""Rotary position embeddings (RoPE) and the ranking sequence's positions.

Glossary: B batch rows, T sequence (= 1 user token + S history slots + C candidate slots),
H heads, K key size. A batch may be padded to fewer history slots than the model's configured
`history_seq_len`, but positions are always those of the full-size layout, where
`history_end = 1 + history_seq_len`: deriving them from S would move every token and silently
change every logit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ROPE_BASE = 10000


def right_anchored_rope_positions(
    padding_mask: jax.Array,
    history_seq_len: int,
    num_user_prefix_tokens: int,
) -> jax.Array:
    """Reference right-anchored positions over a full-size layout.

    The layout is `[prefix (num_user_prefix_tokens), history (history_seq_len), candidates]`,
    history valid slots first. Prefix token i gets position i; with n valid history items, the
    history slot i (0-based) gets `history_end - n + i`, so the newest item always sits at
    `history_end - 1` whatever n is; every candidate gets `history_end`; padding gets 0.

    Args:
      padding_mask: bool [B, T], True where the token is real.
      history_seq_len: number of history slots in the layout.
      num_user_prefix_tokens: number of user tokens before the history.

    Returns:
      float32 [B, T] positions.
    """
    history_start = num_user_prefix_tokens
    history_end = num_user_prefix_tokens + history_seq_len
    idx = jnp.arange(padding_mask.shape[1], dtype=jnp.int32)[None, :]  # [1, T]
    history_len = padding_mask[:, history_start:history_end].sum(axis=1, dtype=jnp.int32)  # [B]
    in_history = (idx >= history_start) & (idx < history_end)
    positions = jnp.where(in_history, history_end - history_len[:, None] + idx - history_start, idx)
    positions = jnp.where(idx >= history_end, history_end, positions)
    return jnp.where(padding_mask, positions, 0).astype(jnp.float32)


def sequence_positions(
    padding_mask: jax.Array,
    candidate_start_offset: int,
    history_seq_len: int,
    rope_positions: str,
) -> jax.Array:
    """Positions of a `[user, S history slots, C candidates]` row, for any S <= history_seq_len.

    "right_anchored": as `right_anchored_rope_positions` over the full-size layout
    (`history_end = 1 + history_seq_len`), whatever S the batch was padded to; a candidate's
    position does not depend on its slot.
    "plain": the slot the token would have in the full-size layout (user 0, history slot i at
    1 + i, candidate j at `history_end + j`), as in the first open-source release.

    Args:
      padding_mask: bool [B, T] with T = candidate_start_offset + C.
      candidate_start_offset: 1 + S, the index of the first candidate.
      history_seq_len: the model's configured history length (S <= history_seq_len).
      rope_positions: "right_anchored" or "plain".

    Returns:
      float32 [B, T] positions.
    """
    if candidate_start_offset - 1 > history_seq_len:
        raise ValueError(
            f"batch has {candidate_start_offset - 1} history slots, more than the model's "
            f"history_seq_len={history_seq_len}"
        )
    history_end = 1 + history_seq_len
    idx = jnp.arange(padding_mask.shape[1], dtype=jnp.int32)[None, :]  # [1, T]
    in_history = (idx >= 1) & (idx < candidate_start_offset)
    is_candidate = idx >= candidate_start_offset
    if rope_positions == "right_anchored":
        history_len = padding_mask[:, 1:candidate_start_offset].sum(axis=1, dtype=jnp.int32)
        positions = jnp.where(in_history, history_end - history_len[:, None] + idx - 1, idx)
        positions = jnp.where(is_candidate, history_end, positions)
        positions = jnp.where(padding_mask, positions, 0)
    elif rope_positions == "plain":
        positions = jnp.where(is_candidate, history_end + idx - candidate_start_offset, idx)
        positions = jnp.broadcast_to(positions, padding_mask.shape)
    else:
        raise ValueError(
            f"rope_positions must be 'right_anchored' or 'plain', got {rope_positions!r}"
        )
    return positions.astype(jnp.float32)


def rotate_half(x: jax.Array) -> jax.Array:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate((-x2, x1), axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, base: int = ROPE_BASE) -> jax.Array:
    """Rotate feature pairs (i, i + K/2) by `position * base**(-2i/K)`, in float32.

    Args:
      x: [B, T, H, K] queries or keys.
      positions: float32 [B, T].

    Returns:
      [B, T, H, K] in x's dtype.
    """
    key_size = x.shape[-1]
    exponents = jnp.arange(0, key_size, 2, dtype=jnp.float32)
    inv_freq = 1.0 / (base ** (exponents / key_size))  # [K/2]
    phase = positions[:, :, None] * inv_freq  # [B, T, K/2]
    phase = jnp.concatenate([phase, phase], axis=-1)[:, :, None, :]  # [B, T, 1, K]
    x32 = x.astype(jnp.float32)
    return (x32 * jnp.cos(phase) + rotate_half(x32) * jnp.sin(phase)).astype(x.dtype)
