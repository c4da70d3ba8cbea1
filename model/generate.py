"""Checkpoints made without holding them in memory: random ones of any size, and table
conversion (`phoenix-ranker init` and `phoenix-ranker quantize`).

Glossary: N table rows, D width.

Both write through `model.checkpoint_writer` in blocks of about `BLOCK_BYTES`, so memory
stays near one block however large the tables are (a table's int8 scales, 4 bytes a row, are
the only thing held whole). Dense weights are small and made or copied whole.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from model.checkpoint import (
    CheckpointInfo,
    default_checkpoint_path,
    load_checkpoint,
    release_pages,
    verify_file,
)
from model.checkpoint_writer import StreamingWriter
from model.config import NANO, NANO_TABLE_ROWS, PhoenixModelConfig
from model.params import TABLE_PREFIX, flatten
from model.tables import TABLES, convert_rows, numpy_dtype, scale_name
from request.hashing import TableRows

BLOCK_BYTES = 32 * 2**20  # float32 bytes of table rows made or converted at a time
GROUP_ROWS = 4096  # random rows come from one generator per group, seeded by its index
PRESETS = ("default", "nano")


def preset(name: str) -> tuple[PhoenixModelConfig, TableRows]:
    """A preset's config and table rows: "default" is the embedded default model's shape,
    "nano" xAI's nano shape (`model.config.NANO`)."""
    if name == "default":
        ckpt = load_checkpoint(default_checkpoint_path(), verify_tables=False)
        return ckpt.config, ckpt.rows
    if name == "nano":
        return PhoenixModelConfig.from_dict(NANO), NANO_TABLE_ROWS
    raise ValueError(f"preset {name!r}; expected one of {', '.join(PRESETS)}")


def table_specs(rows: TableRows, width: int, dtype: str) -> dict[str, tuple[np.dtype, tuple]]:
    """Flat name -> (dtype, shape) of the tables (and int8 scales) of `rows` x `width`."""
    specs = {}
    for table, n in zip(TABLES, rows, strict=True):
        specs[TABLE_PREFIX + table] = (numpy_dtype(dtype), (n, width))
        if dtype == "int8":
            specs[TABLE_PREFIX + scale_name(table)] = (np.dtype(np.float32), (n,))
    return specs


def _blocks(rows: int, width: int):
    """(start, stop) row ranges of about BLOCK_BYTES of float32 each, whole groups."""
    step = max(1, BLOCK_BYTES // (4 * width) // GROUP_ROWS) * GROUP_ROWS
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _write_tables(writer: StreamingWriter, dense: dict[str, np.ndarray], rows: TableRows,
                  width: int, dtype: str, make_rows) -> None:  # fmt: skip
    """Every tensor in name order: dense ones as given, tables from `make_rows(table, start,
    stop)` (float32 [stop - start, D]) converted to `dtype` block by block."""
    tables = dict(zip(TABLES, rows, strict=True))
    scales: dict[str, np.ndarray] = {}
    for name in sorted({**dense, **table_specs(rows, width, dtype)}):
        table = name.removeprefix(TABLE_PREFIX)
        if name in dense:
            writer.write(name, dense[name])
        elif table in tables:
            scale = np.zeros(tables[table], np.float32) if dtype == "int8" else None
            for start, stop in _blocks(tables[table], width):
                values, block_scale = convert_rows(make_rows(table, start, stop), dtype)
                writer.write(name, values)
                if scale is not None:
                    scale[start:stop] = block_scale
            if scale is not None:
                scales[scale_name(table)] = scale
        else:  # an int8 table's scales: its name sorts right after the table's
            writer.write(name, scales.pop(table))


def init_checkpoint(out: str | os.PathLike, config: PhoenixModelConfig, rows: TableRows,
                    table_dtype: str = "float32", seed: int = 0,
                    model_version: str | None = None) -> CheckpointInfo:  # fmt: skip
    """A randomly initialised checkpoint: dense weights as the model initialises them, table
    rows standard normal clipped to +-2 (the tables' truncated-normal initialiser), made and
    written block by block; the same arguments give the same file."""
    from model.network import make_forward  # jax and haiku, only for the dense weights
    from request.layout import empty_batch

    small = TableRows(2, 2, 2)
    init = jax.jit(make_forward(config, small).init)  # one compilation, not one per op
    params = init(jax.random.PRNGKey(seed), empty_batch(config, 1, 1, 1))
    dense = {n: np.asarray(v, np.float32) for n, v in flatten(params).items()
             if not n.startswith(TABLE_PREFIX)}  # fmt: skip

    def make_rows(table: str, start: int, stop: int) -> np.ndarray:
        # One generator per group of rows, seeded by (seed, table, group): the file does not
        # depend on the block size, and any block can be made alone.
        total, width = getattr(rows, table), config.emb_size
        block = np.empty((stop - start, width), np.float32)
        for lo in range(start, stop, GROUP_ROWS):
            rng = np.random.default_rng([seed, TABLES.index(table), lo // GROUP_ROWS])
            n = min(GROUP_ROWS, total - lo)
            block[lo - start : lo - start + n] = rng.standard_normal((n, width), np.float32)
        return np.clip(block, -2.0, 2.0, out=block)

    version = model_version or f"random-{seed}"
    specs = {n: (v.dtype, v.shape) for n, v in dense.items()}
    specs.update(table_specs(rows, config.emb_size, table_dtype))
    with StreamingWriter(out, specs, config, version) as writer:
        _write_tables(writer, dense, rows, config.emb_size, table_dtype, make_rows)
    return writer.info


def quantize_checkpoint(source: str | os.PathLike, out: str | os.PathLike, table_dtype: str,
                        model_version: str | None = None) -> CheckpointInfo:  # fmt: skip
    """`source`'s tables converted to `table_dtype` (from any stored dtype, through float32),
    its dense weights copied; the source is verified first, in one sequential read."""
    verify_file(source)
    ckpt = load_checkpoint(source, verify_tables=False)
    flat = flatten(ckpt.state.params)
    dense = {n: v for n, v in flat.items() if not n.startswith(TABLE_PREFIX)}
    tables = ckpt.tables

    def make_rows(table: str, start: int, stop: int) -> np.ndarray:
        values, scale = tables[table][start:stop], tables.get(scale_name(table))
        out = values.astype(np.float32)
        if scale is not None:
            out *= scale[start:stop, None]
        release_pages(values)  # read once: keep the process's resident memory to a block
        return out

    version = model_version or f"{ckpt.info.model_version}-{table_dtype}"
    specs = {n: (v.dtype, v.shape) for n, v in dense.items()}
    specs.update(table_specs(ckpt.rows, ckpt.config.emb_size, table_dtype))
    with StreamingWriter(out, specs, ckpt.config, version) as writer:
        _write_tables(writer, dense, ckpt.rows, ckpt.config.emb_size, table_dtype, make_rows)
    return writer.info
