"""The parameter tree: flat names, expected shapes, validation.

A haiku params tree is `{module_path: {param_name: array}}`; its flat names are
`module_path + "/" + param_name`, exactly the reference implementation's (see
`docs/interop.md`), plus our tables under `hash_embeddings/`. The
expected names and shapes are read off the model itself (`jax.eval_shape` of its init), so
validation can never drift from what the forward pass asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import haiku as hk
import jax
import numpy as np

from model.config import PhoenixModelConfig
from model.errors import (
    MissingParameterError,
    ParameterDtypeError,
    ParameterShapeError,
    UnexpectedParameterError,
)
from model.network import make_forward
from model.tables import TABLE_DTYPES, TABLE_MODULE, scale_name
from request.hashing import TableRows
from request.layout import empty_batch

TABLE_PREFIX = TABLE_MODULE + "/"


class TrainingState(NamedTuple):
    """The reference's container for trained parameters (a haiku params tree)."""

    params: hk.Params


def flatten(params: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{module: {name: array}} -> {"module/name": array}."""
    return {f"{m}/{n}": v for m, ps in params.items() for n, v in ps.items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{"module/name": array} -> {module: {name: array}} (split at the last '/')."""
    tree: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        module, _, name = key.rpartition("/")
        tree.setdefault(module, {})[name] = value
    return tree


def table_rows(flat: Mapping[str, np.ndarray], where: str) -> TableRows:
    """Hash table row counts read from the tables' shapes."""
    counts = []
    for table in TableRows._fields:
        name = TABLE_PREFIX + table
        if name not in flat:
            raise MissingParameterError(f"{where}: missing parameter {name!r}")
        shape = tuple(flat[name].shape)
        if len(shape) != 2 or shape[0] < 2:
            raise ParameterShapeError(
                f"{where}: {name} has shape {shape}; expected [rows >= 2, emb_size]"
            )
        counts.append(shape[0])
    return TableRows(*counts)


def expected_shapes(config: PhoenixModelConfig, rows: TableRows) -> dict[str, tuple[int, ...]]:
    """Flat name -> shape of every parameter the model with this config and these tables has."""
    forward = make_forward(config, rows)
    dummy = empty_batch(config, 1, 1, 1)
    shapes = jax.eval_shape(forward.init, jax.random.PRNGKey(0), dummy)
    return {name: tuple(s.shape) for name, s in flatten(shapes).items()}


def validate(flat: Mapping[str, np.ndarray], config: PhoenixModelConfig, where: str) -> TableRows:
    """Check names, shapes and dtypes against the config; return the tables' row counts.

    Tables may be float32, bfloat16 or int8; an int8 table needs its float32 scales [N]
    beside it (`model.tables`); every other parameter is float32. Raises
    MissingParameterError, UnexpectedParameterError, ParameterShapeError or
    ParameterDtypeError, each naming the parameter and `where` (a file name).
    """
    rows = table_rows(flat, where)
    expected = expected_shapes(config, rows)
    storage = {}  # name -> the dtype it may have, where not float32
    for table, n in zip(TableRows._fields, rows, strict=True):
        name = TABLE_PREFIX + table
        dtype = flat[name].dtype
        if dtype.name not in TABLE_DTYPES:
            raise ParameterDtypeError(
                f"{where}: {name} is {dtype}; a table is one of {', '.join(TABLE_DTYPES)}"
            )
        storage[name] = dtype
        if dtype == np.int8:
            scale = TABLE_PREFIX + scale_name(table)
            if scale not in flat:
                raise MissingParameterError(
                    f"{where}: {name} is int8 but its per-row scales {scale!r} are missing"
                )
            expected[scale] = (n,)
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise MissingParameterError(f"{where}: missing parameter(s) {missing}")
    unexpected = sorted(set(flat) - set(expected))
    if unexpected:
        raise UnexpectedParameterError(f"{where}: unexpected parameter(s) {unexpected}")
    for name, shape in expected.items():
        value = flat[name]
        if tuple(value.shape) != shape:
            raise ParameterShapeError(
                f"{where}: {name} has shape {list(value.shape)}, the config needs {list(shape)}"
            )
        if value.dtype != storage.get(name, np.float32):
            raise ParameterDtypeError(f"{where}: {name} is {value.dtype}, expected float32")
    return rows
