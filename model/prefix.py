"""Prefix once, candidates in chunks: the forward pass split where candidate isolation allows.

Glossary: L layers, R prefix rows (requests), S history slots, P = 1 + S prefix tokens (user +
history), N slab slots, Kc candidate chunks, C candidates per chunk, G key/value heads, Q query
heads per key/value head, K key size, D model width, A actions.

Candidate isolation makes every layer's user+history keys and values the same for all of a
request's candidates: no candidate is visible to the prefix, and no candidate to another. So
the forward pass splits into
  `encode_prefixes`: user + history of R requests -> each layer's post-RoPE keys and values,
      written into slots of a `PrefixSlab` (device memory that outlives the call, so a prefix
      encoded once serves every chunk of its request, and later requests of the same user);
  `score_chunks`: Kc chunks of C candidates, each chunk reading the slab slot of its own
      request's prefix, -> logits [Kc, C, A].
The candidate stream at layer l needs only the prefix's layer-l keys/values and itself
(`model.attention.candidate_attention`, the same function the one-pass forward uses), so the
logits equal `model.network.make_forward`'s for any chunking (tests/model/test_prefix.py holds
them to it, and to the reference fixture). The last layer's prefix stream needs no attention
output or feed-forward: only its keys and values are read.

These are pure functions of the parameter tree (the reference names, `model.params`), not haiku
modules: the two halves index the same parameters in two calls, which haiku's per-call naming
does not express. Compiled shapes: prefix (R, S) and chunks (Kc, C) for a slab of a given S;
neither depends on the other, which keeps warm-up short.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from model.attention import candidate_attention, masked_attention
from model.config import PhoenixModelConfig
from model.embeddings import part_tokens
from model.layers import rms_norm
from model.mask import prefix_attn_mask
from model.rope import apply_rope, sequence_positions
from model.tables import TABLE_MODULE, lookup
from request.columns import CandidateInputs, PrefixInputs


class PrefixSlab(NamedTuple):
    """Encoded prefixes on the device: N slots of P = 1 + S tokens, every layer's K/V."""

    keys: jax.Array  # [L, N, P, G, K], post-RoPE, compute dtype
    values: jax.Array  # [L, N, P, G, K]
    valid: jax.Array  # bool [N, P]: real prefix tokens

    @property
    def slots(self) -> int:
        return self.valid.shape[0]

    @property
    def history_slots(self) -> int:
        return self.valid.shape[1] - 1


def empty_slab(config: PhoenixModelConfig, slots: int, history_slots: int, dtype) -> PrefixSlab:
    """A slab of `slots` empty slots for prefixes of `history_slots` history slots."""
    m = config.model
    shape = (m.num_layers, slots, 1 + history_slots, m.num_kv_heads, m.key_size)
    return PrefixSlab(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        valid=jnp.zeros((slots, 1 + history_slots), bool),
    )


def slab_slot_bytes(config: PhoenixModelConfig, history_slots: int, dtype) -> int:
    """Device bytes of one slab slot: keys, values and validity of 1 + S tokens."""
    m = config.model
    tokens = 1 + history_slots
    per_token = 2 * m.num_layers * m.num_kv_heads * m.key_size * jnp.dtype(dtype).itemsize
    return tokens * (per_token + 1)


class _Layer(NamedTuple):
    """One decoder layer's parameters (reference names in the comments)."""

    attn_norm: jax.Array  # rms_norm
    query: jax.Array  # multi_head_attention/query [D, H*K]
    key: jax.Array  # multi_head_attention/key [D, G*K]
    value: jax.Array  # multi_head_attention/value [D, G*K]
    attn_out: jax.Array  # multi_head_attention/linear [H*K, D]
    attn_out_norm: jax.Array  # rms_norm_1
    ffn_norm: jax.Array  # rms_norm_2
    ffn_value: jax.Array  # linear_v [D, F]
    ffn_gate: jax.Array  # linear [D, F]
    ffn_out: jax.Array  # linear_1 [F, D]
    ffn_out_norm: jax.Array  # rms_norm_3


def _layer(params, i: int) -> _Layer:
    p = f"transformer/decoder_layer_{i}/"
    w = lambda name: params[p + name]["w"]  # noqa: E731
    scale = lambda name: params[p + name]["scale"]  # noqa: E731
    return _Layer(
        scale("rms_norm"),
        w("multi_head_attention/query"),
        w("multi_head_attention/key"),
        w("multi_head_attention/value"),
        w("multi_head_attention/linear"),
        scale("rms_norm_1"),
        scale("rms_norm_2"),
        w("linear_v"),
        w("linear"),
        w("linear_1"),
        scale("rms_norm_3"),
    )


def _dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """model.layers.Linear: x @ w in x's dtype."""
    return jnp.dot(x, w.astype(x.dtype))


def _project(x: jax.Array, layer: _Layer, positions: jax.Array, config: PhoenixModelConfig):
    """Normed tokens x [B, T, D] -> post-RoPE q [B, T, G, Q, K], key/value [B, T, G, K]."""
    m = config.model
    b, t, _ = x.shape
    g, k = m.num_kv_heads, m.key_size
    q = apply_rope(_dot(x, layer.query).reshape(b, t, m.num_q_heads, k), positions)
    key = apply_rope(_dot(x, layer.key).reshape(b, t, g, k), positions)
    value = _dot(x, layer.value).reshape(b, t, g, k)
    return q.reshape(b, t, g, m.num_q_heads // g, k), key, value


def _finish_layer(h: jax.Array, attn: jax.Array, layer: _Layer) -> jax.Array:
    """Residual attention output, then the GeGLU feed-forward block: [B, T, D] -> [B, T, D]."""
    b, t = attn.shape[:2]
    h = h + rms_norm(_dot(attn.reshape(b, t, -1), layer.attn_out), layer.attn_out_norm)
    x = rms_norm(h, layer.ffn_norm)
    ff = _dot(jax.nn.gelu(_dot(x, layer.ffn_gate)) * _dot(x, layer.ffn_value), layer.ffn_out)
    return h + rms_norm(ff, layer.ffn_out_norm)


def _param(params, name: str) -> jax.Array:
    return params["phoenix_model"][name]


def _tokens(params, config: PhoenixModelConfig, inputs, parts: tuple[str, ...]):
    """`model.embeddings.part_tokens` over a parameter tree, its tables in any storage
    dtype (`model.tables`)."""
    param = lambda name, _shape: _param(params, name)  # noqa: E731
    table = lambda name, rows: lookup(params[TABLE_MODULE], name, rows)  # noqa: E731
    return part_tokens(inputs, config, param, table, parts)


def encode_prefixes(
    params, config: PhoenixModelConfig, dtype, prefix: PrefixInputs
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """User + history of R requests -> (keys, values [L, R, P, G, K], valid bool [R, P])."""
    c, m = config, config.model
    user, history = _tokens(params, c, prefix, ("user", "history"))  # [R, 1, D], [R, S, D]
    h = jnp.concatenate([user, history], axis=1).astype(dtype)  # [R, P, D]
    p = h.shape[1]
    valid = jnp.concatenate(
        [prefix.user_rows[:, :1] != 0, prefix.history_post_rows[:, :, 0] != 0], axis=1
    )  # [R, P]
    positions = sequence_positions(valid, p, c.history_seq_len, c.rope_positions)
    mask = prefix_attn_mask(p, c.history_attention)[None] & valid[:, None, :]  # [R, P, P]
    keys, values = [], []
    for i in range(m.num_layers):
        layer = _layer(params, i)
        q, key, value = _project(rms_norm(h, layer.attn_norm), layer, positions, c)
        keys.append(key)
        values.append(value)
        if i + 1 < m.num_layers:  # the last layer's prefix outputs are never read
            attn = masked_attention(q, key, value, mask, m.attn_output_multiplier)
            h = _finish_layer(h, attn, layer)
    return jnp.stack(keys), jnp.stack(values), valid


def write_prefixes(slab: PrefixSlab, slots: jax.Array, encoded) -> PrefixSlab:
    """`encode_prefixes` output for R rows written to slab slots int32 [R] (distinct); a slot
    of N or more drops its row (padding rows)."""
    keys, values, valid = encoded
    return PrefixSlab(
        keys=slab.keys.at[:, slots].set(keys.astype(slab.keys.dtype), mode="drop"),
        values=slab.values.at[:, slots].set(values.astype(slab.values.dtype), mode="drop"),
        valid=slab.valid.at[slots].set(valid, mode="drop"),
    )


def candidate_positions(config: PhoenixModelConfig, chunks: int, size: int) -> jax.Array:
    """float32 [Kc, C] RoPE positions of candidate slots (`model.rope.sequence_positions`):
    all at `history_end` when right-anchored; `history_end + slot` when plain (the chunk is
    then one reference window)."""
    end = 1 + config.history_seq_len
    if config.rope_positions == "right_anchored":
        return jnp.full((chunks, size), end, jnp.float32)
    return jnp.broadcast_to(end + jnp.arange(size, dtype=jnp.float32), (chunks, size))


def score_chunks(
    params,
    config: PhoenixModelConfig,
    dtype,
    slab: PrefixSlab,
    chunks: CandidateInputs,
    chunk_slot: jax.Array,
) -> jax.Array:
    """Kc chunks of C candidates against their prefixes: float32 logits [Kc, C, A].

    chunk_slot: int32 [Kc], the slab slot holding each chunk's request's prefix.
    """
    c, m = config, config.model
    (h,) = _tokens(params, c, chunks, ("candidate",))
    h = h.astype(dtype)  # [Kc, C, D]
    kc, size = h.shape[:2]
    real = chunks.candidate_post_rows[:, :, 0] != 0  # [Kc, C]
    positions = candidate_positions(c, kc, size)
    prefix_ok = jnp.take(slab.valid, chunk_slot, axis=0)  # [Kc, P]
    for i in range(m.num_layers):
        layer = _layer(params, i)
        q, key, value = _project(rms_norm(h, layer.attn_norm), layer, positions, c)
        attn = candidate_attention(
            q, key, value,
            jnp.take(slab.keys[i], chunk_slot, axis=0),  # [Kc, P, G, K]
            jnp.take(slab.values[i], chunk_slot, axis=0),
            prefix_ok, real, m.attn_output_multiplier,
        )  # fmt: skip
        h = _finish_layer(h, attn, layer)
    out = rms_norm(h, params["phoenix_model/rms_norm"]["scale"])
    return jnp.dot(out.astype(jnp.float32), _param(params, "unembeddings"))  # [Kc, C, A]
