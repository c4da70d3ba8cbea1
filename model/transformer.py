"""The Grok-1-derived decoder stack.

Glossary: B batch, T sequence, D model width, F feed-forward width.

Each layer is "double layer norm" pre-norm: RMSNorm before and after both the attention block
and the GeGLU feed-forward block, each followed by a residual add. Module construction order
fixes haiku's parameter names (`rms_norm`, `multi_head_attention`, `rms_norm_1`, `rms_norm_2`,
`linear_v`, `linear`, `linear_1`, `rms_norm_3`), which are the reference checkpoint's.
"""

from __future__ import annotations

import haiku as hk
import jax

from model.attention import MultiHeadAttention, SequenceContext
from model.config import TransformerConfig
from model.layers import Linear, RMSNorm


def ffn_size(emb_size: int, widening_factor: float) -> int:
    """GeGLU hidden width: int(widening_factor * D) * 2 // 3, rounded up to a multiple of 8."""
    size = int(widening_factor * emb_size) * 2 // 3
    return size + (8 - size) % 8


class DecoderLayer(hk.Module):
    def __init__(self, config: TransformerConfig, name: str):
        super().__init__(name=name)
        self.config = config

    def __call__(self, h: jax.Array, ctx: SequenceContext) -> jax.Array:
        """h [B, T, D] -> [B, T, D]."""
        c = self.config
        attn = MultiHeadAttention(
            c.num_q_heads, c.num_kv_heads, c.key_size, c.attn_output_multiplier
        )(RMSNorm()(h), ctx)
        h = h + RMSNorm()(attn)

        x = RMSNorm()(h)
        width = ffn_size(h.shape[-1], c.widening_factor)
        value = Linear(width, name="linear_v")(x)  # [B, T, F]
        gate = jax.nn.gelu(Linear(width)(x))  # [B, T, F], tanh-approximate gelu
        ff = Linear(h.shape[-1])(gate * value)  # [B, T, D]
        return h + RMSNorm()(ff)


class Transformer(hk.Module):
    """`num_layers` decoder layers named decoder_layer_{i}."""

    def __init__(self, config: TransformerConfig, name: str = "transformer"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, h: jax.Array, ctx: SequenceContext) -> jax.Array:
        """h [B, T, D] -> [B, T, D]."""
        for i in range(self.config.num_layers):
            h = DecoderLayer(self.config, name=f"decoder_layer_{i}")(h, ctx)
        return h
