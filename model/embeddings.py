"""Hash-embedding tables and the three token builders (user, history, candidate).

Glossary: B batch, S history slots, C candidate slots, D model width, A actions (19),
U / I / Au hashes per user / post / author id, V product surfaces, N table rows.

Row 0 of every table is padding: a slot whose first post row (first user row for the user) is
0 is masked out. The tables live under `hash_embeddings/` in the parameter tree; the reference
keeps them outside the model, which is why the token builders below take looked-up embeddings.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from request.hashing import TableRows


class HashEmbeddings(hk.Module):
    """The user, post and author tables, float32 [N, D] each."""

    def __init__(self, rows: TableRows, emb_size: int, name: str = "hash_embeddings"):
        super().__init__(name=name)
        self.rows = rows
        self.emb_size = emb_size

    def lookup(self, table: str, row_ids: jax.Array) -> jax.Array:
        """int32 [...] rows of table `table` -> float32 [..., D]."""
        init = hk.initializers.TruncatedNormal(stddev=1.0)
        weights = hk.get_parameter(
            table, [getattr(self.rows, table), self.emb_size], jnp.float32, init=init
        )
        return jnp.take(weights, row_ids, axis=0)


def user_tokens(user_emb: jax.Array, proj: jax.Array) -> jax.Array:
    """user_emb [B, U, D], proj [U*D, D] -> [B, 1, D]."""
    b, u, d = user_emb.shape
    return jnp.dot(user_emb.reshape(b, 1, u * d), proj)


def action_embeddings(multi_hot: jax.Array, action_projection: jax.Array) -> jax.Array:
    """multi_hot [B, S, A] (0/1), action_projection [A, D] -> [B, S, D].

    Signed encoding: taken actions count +1, the others -1; events without any action get 0.
    """
    multi_hot = multi_hot.astype(jnp.float32)
    signed = 2.0 * multi_hot - 1.0
    any_action = jnp.any(multi_hot > 0, axis=-1, keepdims=True)
    return jnp.dot(signed, action_projection) * any_action


def history_tokens(
    post_emb: jax.Array,
    author_emb: jax.Array,
    action_emb: jax.Array,
    surface_emb: jax.Array,
    proj: jax.Array,
) -> jax.Array:
    """[post [B,S,I,D], author [B,S,Au,D], action [B,S,D], surface [B,S,D]] -> [B, S, D].

    proj is [(I + Au + 2) * D, D]; the features are concatenated in exactly this order.
    """
    b, s = post_emb.shape[:2]
    features = jnp.concatenate(
        [post_emb.reshape(b, s, -1), author_emb.reshape(b, s, -1), action_emb, surface_emb],
        axis=-1,
    )
    return jnp.dot(features, proj)


def candidate_tokens(
    post_emb: jax.Array, author_emb: jax.Array, surface_emb: jax.Array, proj: jax.Array
) -> jax.Array:
    """[post [B,C,I,D], author [B,C,Au,D], surface [B,C,D]] -> [B, C, D]; proj [(I+Au+1)*D, D]."""
    b, c = post_emb.shape[:2]
    features = jnp.concatenate(
        [post_emb.reshape(b, c, -1), author_emb.reshape(b, c, -1), surface_emb], axis=-1
    )
    return jnp.dot(features, proj)
