"""Hash-embedding table storage: the dtypes a table may have, int8 rows, and row gathering.

Glossary: N table rows, D width, G gathered rows, U/I/Au hashes per user/post/author id.

A table `hash_embeddings/<name>` [N, D] is stored as float32, bfloat16, or int8. An int8 table
has a float32 scale per row beside it, `hash_embeddings/<name>_scale` [N]: row r's values are
`int8[r] * scale[r]`, quantized symmetrically (scale = max|row| / 127, so the largest entry
of a row is exact and every entry is within scale / 2 of the float32 value). Dense weights
are float32 whatever the tables are. The model reads every table through `lookup`, which
returns float32 rows whatever the storage.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from request.hashing import TableRows

TABLES = TableRows._fields  # "user", "post", "author"
TABLE_MODULE = "hash_embeddings"  # the parameter subtree holding the tables (and scales)
TABLE_DTYPES = ("float32", "bfloat16", "int8")
SCALE_SUFFIX = "_scale"
INT8_MAX = 127


def scale_name(table: str) -> str:
    """The parameter name (within `hash_embeddings/`) of an int8 table's per-row scales."""
    return table + SCALE_SUFFIX


def numpy_dtype(name: str) -> np.dtype:
    """A table dtype name -> its numpy dtype (bfloat16 is ml_dtypes')."""
    if name not in TABLE_DTYPES:
        raise ValueError(f"table dtype {name!r}; expected one of {', '.join(TABLE_DTYPES)}")
    return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


def dtype_name(dtype) -> str:
    """numpy dtype -> table dtype name ("float32", "bfloat16", "int8")."""
    return np.dtype(dtype).name


def bytes_per_row(dtype: str, width: int) -> int:
    """Bytes one table row of `width` takes in storage (int8: its values and its scale)."""
    if dtype == "int8":
        return width + 4
    return width * numpy_dtype(dtype).itemsize


def table_dtype(tables: Mapping[str, np.ndarray]) -> str:
    """The storage dtype of a `hash_embeddings` subtree ("mixed" if the tables differ)."""
    names = {dtype_name(tables[t].dtype) for t in TABLES if t in tables}
    return names.pop() if len(names) == 1 else "mixed"


def table_bytes(tables: Mapping[str, np.ndarray]) -> int:
    """Bytes of every table and scale in a `hash_embeddings` subtree."""
    return sum(int(v.nbytes) for v in tables.values())


def quantize_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, D] -> (int8 [n, D], float32 scale [n]); an all-zero row has scale 0 (as
    has a row whose largest magnitude is below float32's normal range: it reads back as 0)."""
    rows = np.asarray(rows, np.float32)
    scale = np.abs(rows).max(axis=1) / INT8_MAX
    safe = np.where(scale > 0, scale, 1.0)
    values = np.clip(np.rint(rows / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return values, scale.astype(np.float32)


def convert_rows(rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 rows [n, D] -> (stored rows in `dtype`, their scales [n] if int8 else None)."""
    if dtype == "int8":
        return quantize_int8(rows)
    return np.asarray(rows, np.float32).astype(numpy_dtype(dtype)), None


def dequantize(values, scale=None):
    """Stored rows [..., D] (and int8 scales [...]) -> float32 [..., D]; numpy or jax."""
    out = values.astype(np.float32)
    return out if scale is None else out * scale[..., None]


def lookup(tables: Mapping, table: str, rows: jnp.ndarray) -> jnp.ndarray:
    """Rows int32 [...] of `tables[table]` (any storage dtype) -> float32 [..., D] (jax)."""
    scale = tables.get(scale_name(table))
    values = jnp.take(tables[table], rows, axis=0)
    return dequantize(values, None if scale is None else jnp.take(scale, rows, axis=0))


def host_lookup(tables: Mapping[str, np.ndarray], table: str, rows: np.ndarray) -> np.ndarray:
    """`lookup` on the host (numpy), for gathering: rows int [G] -> float32 [G, D] if int8
    (dequantized here, so only float rows travel), else rows in the table's own dtype."""
    scale = tables.get(scale_name(table))
    values = np.take(tables[table], rows, axis=0)
    return values if scale is None else dequantize(values, np.take(scale, rows, axis=0))


def dequantized(params: Mapping) -> dict:
    """A parameter tree whose tables are float32 (int8 rows times their scales, bfloat16
    widened) and hold no scales; every other subtree as it is. It holds the tables in memory:
    for offline use (the `Ranker`, evaluation, export), not serving."""
    tables = params[TABLE_MODULE]
    out = dict(params)
    out[TABLE_MODULE] = {
        t: dequantize(np.asarray(tables[t]), tables.get(scale_name(t))) for t in TABLES
    }
    return out


def dense(params: Mapping) -> dict:
    """A parameter tree without its tables: what host placement puts on the devices."""
    return {module: leaves for module, leaves in params.items() if module != TABLE_MODULE}


def describe_tables(rows, width: int, dtype: str) -> str:
    """One line: each table's rows (`TableRows`) and the bytes of all of them in `dtype`."""
    total = sum(rows) * bytes_per_row(dtype, width)
    parts = ", ".join(f"{t} {n:,}" for t, n in zip(TABLES, rows, strict=True))
    return f"tables {parts} rows x {width} {dtype}: {total / 1e9:.2f} GB"
