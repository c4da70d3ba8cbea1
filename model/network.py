"""The Phoenix ranking model: hashed ids of one user, their history and candidates -> logits.

Glossary: B batch rows, S history slots in this batch (<= history_seq_len), C candidate
slots per row, T = 1 + S + C, D model width, A actions.

    user token       [B, 1, D]   proj_mat_1 . concat(user hash embeddings)
    history tokens   [B, S, D]  proj_mat_3 . concat(post, author, action, surface embeddings)
    candidate tokens [B, C, D]  proj_mat_2 . concat(post, author, surface embeddings)
    transformer over [user, history, candidates] with candidate isolation
    logits           [B, C, A]  unembeddings . rms_norm(candidate outputs)

`make_forward` wraps this in `hk.transform`; `forward.apply(params, batch)` is one pure
function from a `RankingBatch` of table rows to float32 logits, ready for `jax.jit`.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from model.attention import SequenceContext
from model.config import PhoenixModelConfig
from model.embeddings import HashEmbeddings, part_tokens
from model.layers import RMSNorm
from model.rope import sequence_positions
from model.transformer import Transformer
from request.hashing import TableRows
from request.layout import RankingBatch


def default_compute_dtype(backend: str | None = None) -> jnp.dtype:
    """bfloat16 on GPU/TPU, float32 on CPU (where bfloat16 matmuls are slower)."""
    backend = backend or jax.default_backend()
    return jnp.float32 if backend == "cpu" else jnp.bfloat16


class PhoenixModel(hk.Module):
    """Token building, transformer, unembedding. Parameters under `phoenix_model/`."""

    def __init__(self, config: PhoenixModelConfig, name: str = "phoenix_model"):
        super().__init__(name=name)
        self.config = config

    def _param(self, name: str, shape: list[int]) -> jax.Array:
        init = hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        return hk.get_parameter(name, shape, jnp.float32, init=init)

    def __call__(
        self,
        batch: RankingBatch,
        tables: HashEmbeddings,
        transformer: Transformer,
        dtype: jnp.dtype,
        attention: str,
    ) -> jax.Array:
        c = self.config
        d, a = c.emb_size, c.num_actions
        user, history, candidates = part_tokens(batch, c, self._param, tables.lookup)
        # user [B, 1, D], history [B, S, D], candidates [B, C, D]
        tokens = jnp.concatenate([user, history, candidates], axis=1).astype(dtype)  # [B, T, D]
        padding_mask = jnp.concatenate(
            [
                batch.user_rows[:, :1] != 0,
                batch.history_post_rows[:, :, 0] != 0,
                batch.candidate_post_rows[:, :, 0] != 0,
            ],
            axis=1,
        )  # [B, T]
        offset = 1 + history.shape[1]
        ctx = SequenceContext(
            padding_mask=padding_mask,
            positions=sequence_positions(padding_mask, offset, c.history_seq_len, c.rope_positions),
            candidate_start_offset=offset,
            history_attention=c.history_attention,
            attention=attention,
        )
        out = transformer(tokens, ctx)[:, offset:]  # [B, C, D]
        out = RMSNorm()(out)
        unembeddings = self._param("unembeddings", [d, a])
        return jnp.dot(out.astype(jnp.float32), unembeddings)  # [B, C, A] float32


def make_forward(
    config: PhoenixModelConfig,
    rows: TableRows,
    dtype: jnp.dtype | None = None,
    attention: str = "isolated",
) -> hk.Transformed:
    """`hk.Transformed` whose `apply(params, batch)` returns float32 logits [B, C, A].

    Args:
      config: the model configuration.
      rows: hash table row counts (`TableRows.of_params(params)` for loaded parameters).
      dtype: forward dtype; parameters stay float32. Default: `default_compute_dtype()`.
      attention: "isolated" (serving) or "dense" (the reference's [T, T] masked softmax).
    """
    dtype = dtype or default_compute_dtype()

    def forward(batch: RankingBatch) -> jax.Array:
        tables = HashEmbeddings(rows, config.emb_size)
        transformer = Transformer(config.model)
        return PhoenixModel(config)(batch, tables, transformer, dtype, attention)

    return hk.without_apply_rng(hk.transform(forward))
