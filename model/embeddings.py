"""Hash-embedding tables and the token builders (user, history, candidate).

Glossary: B batch, S history slots, C candidate slots, D model width, A actions (19),
U / I / Au hashes per user / post / author id, V product surfaces, N table rows.

Row 0 of every table is padding: a slot whose first post row (first user row for the user) is
0 is masked out. The tables live under `hash_embeddings/` in the parameter tree; the reference
keeps them outside the model, which is why the token builders below take looked-up embeddings.

`part_tokens` is the one place that says which inputs and parameters make each part's
tokens: both forward passes call it (`model.network`, haiku, creating the parameters;
`model.prefix`, reading a parameter tree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


# A parameter of `phoenix_model/` by name and float32 shape (haiku creates it on first use).
Param = Callable[[str, list[int]], jax.Array]
# Rows of a hash table: (table, int32 row ids [...]) -> float32 [..., D].
Table = Callable[[str, jax.Array], jax.Array]

PARTS = ("user", "history", "candidate")


def part_tokens(inputs, config, param: Param, table: Table, parts: Iterable[str] = PARTS
                ) -> list[jax.Array]:  # fmt: skip
    """The tokens of each of `parts` ("user" [B, 1, D], "history" [B, S, D], "candidate"
    [B, C, D]) from a request's arrays (`inputs`: a `RankingBatch`, `PrefixInputs` or
    `CandidateInputs`, by `request.columns` name). Parameters are asked for in one fixed
    order whatever the parts, which is the order haiku initializes them in."""
    parts = set(parts)
    c, h = config, config.hash_config
    d, a = c.emb_size, c.num_actions
    surfaces = param("product_surface_embedding_table", [c.product_surface_vocab_size, d])
    out = []
    if "user" in parts:
        out.append(user_tokens(table("user", inputs.user_rows),
                               param("proj_mat_1", [h.num_user_hashes * d, d])))  # fmt: skip
    if "history" in parts:
        out.append(history_tokens(
            table("post", inputs.history_post_rows),
            table("author", inputs.history_author_rows),
            action_embeddings(inputs.history_actions, param("action_projection", [a, d])),
            jnp.take(surfaces, inputs.history_surface, axis=0),
            param("proj_mat_3", [(h.num_item_hashes + h.num_author_hashes + 2) * d, d]),
        ))  # fmt: skip
    if "candidate" in parts:
        out.append(candidate_tokens(
            table("post", inputs.candidate_post_rows),
            table("author", inputs.candidate_author_rows),
            jnp.take(surfaces, inputs.candidate_surface, axis=0),
            param("proj_mat_2", [(h.num_item_hashes + h.num_author_hashes + 1) * d, d]),
        ))  # fmt: skip
    return out
