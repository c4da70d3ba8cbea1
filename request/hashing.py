"""Raw 64-bit ids -> hash-table rows (the training/serving contract).

Hash `k` of id `x` is output `k` of the SplitMix64 generator seeded with `x`:

    h_k(x)   = mix((x + (k + 1) * 0x9E3779B97F4A7C15) mod 2**64)
    row_k(x) = 1 + h_k(x) mod (rows - 1)        # in [1, rows); row 0 is padding only

Vectorised over numpy uint64 arrays (wrap-around arithmetic is exactly mod 2**64), so hashing
2,800 candidates costs microseconds and never touches Python's `hash()`.

Shapes: N ids, n hashes per id.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


class TableRows(NamedTuple):
    """Row counts of the hash tables a request's ids hash into (its fields: the tables)."""

    user: int
    post: int
    author: int

    @classmethod
    def of_params(cls, params) -> TableRows:
        """Read from a parameter tree's `hash_embeddings/<table>` shapes."""
        tables = params["hash_embeddings"]
        return cls(*(int(tables[name].shape[0]) for name in cls._fields))


# Each table's hashes per id: the model config attribute that counts them (the reference's
# names: a post is an "item").
HASHES = {
    "user": "hash_config.num_user_hashes",
    "post": "hash_config.num_item_hashes",
    "author": "hash_config.num_author_hashes",
}
assert tuple(HASHES) == TableRows._fields


def hashes_per_table(config: Any) -> dict[str, int]:
    """Hashes per id of each table, for a model config (`request.columns.ModelShape`)."""
    return {table: int(operator.attrgetter(attr)(config)) for table, attr in HASHES.items()}


def splitmix64_mix(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 output function over uint64 arrays (mod 2**64)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _S30)) * _MIX_1
        z = (z ^ (z >> _S27)) * _MIX_2
    return z ^ (z >> _S31)


def hash_ids(ids: np.ndarray, num_hashes: int) -> np.ndarray:
    """h_k(ids) for k in [0, num_hashes): uint64 [N] -> uint64 [N, num_hashes]."""
    ids = np.asarray(ids, dtype=np.uint64)
    k = np.arange(1, num_hashes + 1, dtype=np.uint64)  # [n]
    with np.errstate(over="ignore"):
        seeded = ids[..., None] + k * GOLDEN_GAMMA  # [N, n], wraps mod 2**64
    return splitmix64_mix(seeded)


def hash_rows(ids: np.ndarray, num_hashes: int, rows: int) -> np.ndarray:
    """Table rows of ids: uint64 [N] -> int32 [N, num_hashes], each in [1, rows)."""
    if rows < 2:
        raise ValueError(f"a hash table needs at least 2 rows (row 0 is padding), got {rows}")
    if rows > np.iinfo(np.int32).max:
        raise ValueError(f"hash table rows must fit in int32, got {rows}")
    h = hash_ids(ids, num_hashes)
    return (h % np.uint64(rows - 1) + np.uint64(1)).astype(np.int32)
