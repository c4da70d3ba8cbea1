"""Grouped-query self-attention with RoPE, tanh-clamped float32 logits and candidate isolation.

Glossary: B batch, T sequence (= P + C), P prefix (user + history slots), C candidate slots,
H query heads, G key/value heads, Q = H / G query heads per key/value head, K key size,
D model width.

Two implementations of the same math, selected by `SequenceContext.attention`:
  "isolated" (default): user+history queries attend over the P prefix keys; each candidate
      query attends over the P prefix keys plus its own key. This is exactly the masked softmax
      of `make_recsys_attn_mask` with the masked-out terms (which are exactly 0) left out, so it
      costs O(C * P) instead of O(T**2) and every candidate is computed independently.
  "dense": the reference formulation, one [T, T] masked softmax. Kept to prove the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from model.layers import Linear
from model.mask import prefix_attn_mask, ranking_attn_mask
from model.rope import apply_rope

ATTN_LOGIT_CAP = 30.0  # logits are clamped to (-30, 30) by 30 * tanh(logits / 30)


class SequenceContext(NamedTuple):
    """What every layer needs to know about the `[user, history, candidates]` sequence."""

    padding_mask: jax.Array  # bool [B, T], True for real tokens.
    positions: jax.Array  # float32 [B, T], RoPE positions.
    candidate_start_offset: int  # P, static: index of the first candidate slot.
    history_attention: str  # "causal" or "bidirectional" among user+history tokens.
    attention: str = "isolated"  # "isolated" or "dense" (see the module docstring).


def exp_weights(logits: jax.Array, mask: jax.Array, multiplier: float) -> jax.Array:
    """Unnormalised float32 softmax numerators `exp(clamped logit)`, 0 where masked out.

    No running maximum is subtracted: the logits are clamped to (-30, 30), so every term is
    below 1.1e13 and any sum of them far below float32's range; subtracting the maximum only
    guards against overflow, and would cost one more pass over the weights. Dividing by the
    sum gives the masked softmax (to float32 rounding).

    Args:
      logits: raw q.k dot products (any float dtype), [..., keys].
      mask: bool, broadcastable to `logits`; False entries get weight 0.
      multiplier: the model's `attn_output_multiplier`.
    """
    return jnp.where(mask, jnp.exp(clamped_logits(logits, multiplier)), 0.0)


def normaliser(total: jax.Array) -> jax.Array:
    """1 / the sum of a row's weights; a row whose every key is masked (padding) gets 1."""
    return 1.0 / jnp.where(total > 0, total, 1.0)


def clamped_logits(logits: jax.Array, multiplier: float) -> jax.Array:
    """float32 `30 * tanh(logits * multiplier / 30)`: the model's scaled, clamped logits."""
    logits = logits.astype(jnp.float32) * multiplier
    return ATTN_LOGIT_CAP * jnp.tanh(logits / ATTN_LOGIT_CAP)


class MultiHeadAttention(hk.Module):
    """Self-attention over the ranking sequence; parameters query/key/value/linear."""

    def __init__(
        self,
        num_q_heads: int,
        num_kv_heads: int,
        key_size: int,
        attn_output_multiplier: float,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.num_q_heads = num_q_heads
        self.num_kv_heads = num_kv_heads
        self.key_size = key_size
        self.multiplier = attn_output_multiplier

    def __call__(self, x: jax.Array, ctx: SequenceContext) -> jax.Array:
        """x [B, T, D] -> [B, T, D]."""
        b, t, d = x.shape
        hkv, g, k = self.num_kv_heads, self.num_q_heads // self.num_kv_heads, self.key_size
        q = Linear(self.num_q_heads * k, name="query")(x).reshape(b, t, hkv, g, k)
        key = Linear(hkv * k, name="key")(x).reshape(b, t, hkv, k)
        value = Linear(hkv * k, name="value")(x).reshape(b, t, hkv, k)
        # RoPE needs a heads axis; query head h uses key/value head h // Q.
        q = apply_rope(q.reshape(b, t, hkv * g, k), ctx.positions).reshape(b, t, hkv, g, k)
        key = apply_rope(key, ctx.positions)
        if ctx.attention == "dense":
            out = self._dense(q, key, value, ctx)
        elif ctx.attention == "isolated":
            out = self._isolated(q, key, value, ctx)
        else:
            raise ValueError(f"attention must be 'isolated' or 'dense', got {ctx.attention!r}")
        return Linear(d)(out.reshape(b, t, hkv * g * k))  # [B, T, D]

    def _dense(self, q, key, value, ctx: SequenceContext):
        t = q.shape[1]
        structure = ranking_attn_mask(t, ctx.candidate_start_offset, ctx.history_attention)
        mask = structure[0] & ctx.padding_mask[:, None, :]  # [B, T, T]
        return masked_attention(q, key, value, mask, self.multiplier)

    def _isolated(self, q, key, value, ctx: SequenceContext):
        p = ctx.candidate_start_offset
        key_ok = ctx.padding_mask  # [B, T]
        # User+history queries: only prefix keys are visible to them.
        prefix_mask = prefix_attn_mask(p, ctx.history_attention)[None] & key_ok[:, None, :p]
        prefix_out = masked_attention(
            q[:, :p], key[:, :p], value[:, :p], prefix_mask, self.multiplier
        )  # [B, P, G, Q, K]
        cand_out = candidate_attention(
            q[:, p:], key[:, p:], value[:, p:], key[:, :p], value[:, :p],
            key_ok[:, :p], key_ok[:, p:], self.multiplier,
        )  # fmt: skip
        return jnp.concatenate([prefix_out, cand_out], axis=1)  # [B, T, G, Q, K]


def masked_attention(q, key, value, mask, multiplier: float) -> jax.Array:
    """Grouped-query attention under a mask.

    q [B, Tq, G, Q, K], key/value [B, Tk, G, K], mask bool [B, Tq, Tk] -> [B, Tq, G, Q, K].
    """
    logits = jnp.einsum("bthgk,bshk->bhgts", q, key, preferred_element_type=jnp.float32)
    weights = exp_weights(logits, mask[:, None, None], multiplier)  # [B, G, Q, Tq, Tk]
    out = jnp.einsum("bhgts,bshk->bthgk", weights.astype(value.dtype), value)
    scale = jnp.transpose(normaliser(weights.sum(axis=-1)), (0, 3, 1, 2))[..., None]
    return (out * scale).astype(value.dtype)  # [B, Tq, G, Q, K]


def candidate_attention(
    q_c, k_c, v_c, k_p, v_p, prefix_ok, self_ok, multiplier: float
) -> jax.Array:
    """Candidate isolation: each candidate query attends to its row's prefix keys and its own.

    Args:
      q_c: candidate queries [B, C, G, Q, K]; k_c, v_c: their keys/values [B, C, G, K].
      k_p, v_p: the prefix (user + history) keys/values of each row [B, P, G, K].
      prefix_ok: bool [B, P], real prefix tokens; self_ok: bool [B, C], real candidates.
      multiplier: the model's `attn_output_multiplier`.

    Returns:
      [B, C, G, Q, K]. Equal to the [T, T] masked softmax's candidate rows, whose masked-out
      terms are exactly 0; a row is a request's window or, in `model.prefix`, a chunk.

    On CPU the rows are computed one after another (`lax.map`): a row's [G, Q, C, P] weights
    then stay in cache between the elementwise passes and the two products, which made the
    nano preset's chunk calls ~8% faster; accelerators take all rows at once.
    """
    args = (q_c, k_c, v_c, k_p, v_p, prefix_ok, self_ok)
    if q_c.shape[0] > 1 and jax.default_backend() == "cpu":
        return jax.lax.map(lambda row: _candidate_rows(*(a[None] for a in row), multiplier)[0],
                           args)  # fmt: skip
    return _candidate_rows(*args, multiplier)


def _candidate_rows(q_c, k_c, v_c, k_p, v_p, prefix_ok, self_ok, multiplier: float):
    """`candidate_attention` of every row at once.

    The softmax over [P prefix keys, own key] is taken in parts (`exp_weights`): no [P + 1]
    concatenation, and the normalisation applied to the [C, K] outputs rather than to the
    [C, P] weights. Rows whose every key is masked (padding) get zeros.
    """
    e_prefix = exp_weights(
        jnp.einsum("bchgk,bphk->bhgcp", q_c, k_p, preferred_element_type=jnp.float32),
        prefix_ok[:, None, None, None, :], multiplier,
    )  # fmt: skip
    e_self = exp_weights(
        jnp.einsum("bchgk,bchk->bhgc", q_c, k_c, preferred_element_type=jnp.float32),
        self_ok[:, None, None, :], multiplier,
    )  # fmt: skip
    inverse = normaliser(e_prefix.sum(axis=-1) + e_self)  # [B, G, Q, C]
    out = jnp.einsum("bhgcp,bphk->bchgk", e_prefix.astype(v_p.dtype), v_p)  # [B, C, G, Q, K]
    scale = jnp.transpose(inverse, (0, 3, 1, 2))[..., None]  # [B, C, G, Q, 1]
    self_weight = jnp.transpose(e_self * inverse, (0, 3, 1, 2))[..., None]
    return (out * scale + self_weight * v_c[:, :, :, None, :]).astype(v_p.dtype)
