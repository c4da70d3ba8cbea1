"""The exchange format: a `.npz` of flat parameter names plus the config as JSON.

This is what a reference training job writes from its haiku `params` tree and reads back, so
`import_exchange` / `export_exchange` are the bridge to and from the reference implementation.
Both validate every name, shape and dtype against the config (the checkpoint's own errors).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from model.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from model.config import ConfigError, PhoenixModelConfig
from model.errors import IncompatibleConfigError, NotACheckpointError
from model.params import flatten, unflatten, validate
from model.tables import dequantized


def read_exchange(
    params_path: str | os.PathLike, config_path: str | os.PathLike
) -> tuple[dict, PhoenixModelConfig]:
    """Load and validate an exchange pair: (params tree, config)."""
    try:
        config = PhoenixModelConfig.from_json(Path(config_path).read_text())
    except FileNotFoundError:
        raise IncompatibleConfigError(f"{config_path}: no such file") from None
    except ConfigError as e:
        raise IncompatibleConfigError(f"{config_path}: {e}") from None
    try:
        with np.load(params_path, allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise NotACheckpointError(f"{params_path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise NotACheckpointError(f"{params_path}: not a readable .npz file ({e})") from None
    validate(flat, config, where=str(params_path))
    return unflatten(flat), config


def import_exchange(
    params_path: str | os.PathLike,
    config_path: str | os.PathLike,
    out: str | os.PathLike,
    model_version: str | None = None,
) -> CheckpointInfo:
    """Exchange `.npz` + config JSON -> checkpoint at `out`."""
    params, config = read_exchange(params_path, config_path)
    version = model_version or f"imported:{Path(params_path).stem}"
    return save_checkpoint(out, params, config, model_version=version)


def export_exchange(
    checkpoint_path: str | os.PathLike,
    params_path: str | os.PathLike,
    config_path: str | os.PathLike,
) -> None:
    """Checkpoint -> exchange `.npz` + config JSON, bit-exact for float32 tables; bfloat16 or
    int8 tables are written as the float32 values the model computes with (the exchange
    format, the reference's, has float32 tables only)."""
    ckpt = load_checkpoint(checkpoint_path)
    with open(params_path, "wb") as f:  # a file object: np.savez must not append ".npz"
        np.savez(f, **flatten(dequantized(ckpt.state.params)))
    Path(config_path).write_text(ckpt.config.to_json() + "\n")
