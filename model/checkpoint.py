"""Checkpoints: a `TrainingState`'s parameters in one safetensors file, loaded without pickle.

Layout (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON
header (tensor name -> dtype, shape, byte range; plus string metadata), then the raw tensor
bytes. Tensor names are the flat parameter names of the interop contract. Our metadata:

    format          "phoenix-ranking-checkpoint"
    format_version  "1"
    config          the model config JSON (interop field names)
    model_version   a human-readable version string, served in ModelInfo
    created_at      ISO-8601 UTC time of writing
    content_sha256  sha256 over the tensors in name order (name, dtype, shape, bytes)

Loading memory-maps the file and validates it without copying the tensors: each parameter is
a read-only numpy view of the mapping (the device transfer is the only copy).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mmap
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from model.config import ConfigError, PhoenixModelConfig, TableRows
from model.errors import (
    ChecksumMismatchError,
    IncompatibleConfigError,
    NotACheckpointError,
    ParameterDtypeError,
    TruncatedCheckpointError,
)
from model.params import TrainingState, flatten, unflatten, validate

FORMAT = "phoenix-ranking-checkpoint"
FORMAT_VERSION = "1"
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None, "I32": np.int32}


DEFAULT_CHECKPOINT = Path(__file__).parent / "default" / "phoenix-default.safetensors"


def default_checkpoint_path() -> Path:
    """The embedded default model shipped inside the package."""
    return DEFAULT_CHECKPOINT


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself."""

    model_version: str
    created_at: str
    content_sha256: str  # recorded checksum of the tensors (verified at load)
    file_sha256: str  # sha256 of the whole file, as `sha256sum` prints it
    format_version: str
    path: str


@dataclass(frozen=True)
class Checkpoint:
    state: TrainingState  # params: {module: {name: float32 array}}, read-only views
    config: PhoenixModelConfig
    rows: TableRows
    info: CheckpointInfo

    @property
    def num_parameters(self) -> int:
        return sum(int(v.size) for v in flatten(self.state.params).values())


def content_sha256(flat: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape, then the raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(flat):
        value = np.ascontiguousarray(flat[name])
        digest.update(f"{name}\0{value.dtype.str}\0{list(value.shape)}\0".encode())
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    params: TrainingState | Mapping,
    config: PhoenixModelConfig,
    model_version: str,
    created_at: str | None = None,
) -> CheckpointInfo:
    """Validate `params` against `config`, write them atomically to `path`, and read the file
    back through `load_checkpoint` (so a checkpoint that was written is known to load)."""
    tree = params.params if isinstance(params, TrainingState) else params
    flat = {name: np.ascontiguousarray(np.asarray(v)) for name, v in flatten(tree).items()}
    validate(flat, config, where=str(path))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "model_version": model_version,
        "created_at": created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "content_sha256": content_sha256(flat),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the model from a serving user
    try:
        safetensors.numpy.save_file(flat, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return load_checkpoint(path).info


def _read_header(mm: mmap.mmap | bytes, where: str) -> tuple[dict, int]:
    """Parse the safetensors header: (header dict, offset of the data section)."""
    size = len(mm)
    if size < 8:
        raise NotACheckpointError(f"{where}: {size} bytes is too short to be a checkpoint")
    (header_len,) = struct.unpack("<Q", mm[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise NotACheckpointError(f"{where}: not a safetensors file (header length {header_len})")
    if 8 + header_len > size:
        raise TruncatedCheckpointError(
            f"{where}: file is {size} bytes but its header alone needs {8 + header_len}"
        )
    try:
        header = json.loads(bytes(mm[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotACheckpointError(f"{where}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise NotACheckpointError(f"{where}: not a safetensors file (header is not an object)")
    return header, 8 + header_len


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Memory-map, validate and return a checkpoint; raises a CheckpointError subclass."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise NotACheckpointError(f"{where}: file is empty")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise NotACheckpointError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise NotACheckpointError(f"{where}: is a directory") from None

    header, data_start = _read_header(mm, where)
    metadata = header.pop("__metadata__", None) or {}
    if metadata.get("format") != FORMAT:
        raise NotACheckpointError(
            f"{where}: a safetensors file without phoenix checkpoint metadata "
            "(use `phoenix-ranker import` for exchange files)"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise IncompatibleConfigError(
            f"{where}: checkpoint format version {metadata.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    try:
        config = PhoenixModelConfig.from_json(metadata.get("config", ""))
    except ConfigError as e:
        raise IncompatibleConfigError(f"{where}: {e}") from None

    flat = _tensor_views(mm, header, data_start, where)
    rows = validate(flat, config, where)
    recorded = metadata.get("content_sha256", "")
    actual = content_sha256(flat)
    if actual != recorded:
        raise ChecksumMismatchError(
            f"{where}: tensor checksum {actual[:16]}... does not match the recorded "
            f"{recorded[:16] or '(none)'}...: the file is corrupt"
        )
    info = CheckpointInfo(
        model_version=metadata.get("model_version", ""),
        created_at=metadata.get("created_at", ""),
        content_sha256=recorded,
        file_sha256=hashlib.sha256(mm).hexdigest(),
        format_version=FORMAT_VERSION,
        path=where,
    )
    return Checkpoint(TrainingState(unflatten(flat)), config, rows, info)


def _tensor_views(
    mm: mmap.mmap, header: dict, data_start: int, where: str
) -> dict[str, np.ndarray]:
    """Read-only numpy views of every tensor, after checking its byte range."""
    size = len(mm)
    flat = {}
    for name, entry in header.items():
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise NotACheckpointError(f"{where}: malformed header entry for {name!r}") from None
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise ParameterDtypeError(f"{where}: {name} is {dtype_name}, expected float32")
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * np.dtype(dtype).itemsize or begin < 0:
            raise NotACheckpointError(f"{where}: byte range of {name!r} does not match its shape")
        if data_start + end > size:
            raise TruncatedCheckpointError(
                f"{where}: file is {size} bytes but {name!r} ends at byte {data_start + end}"
            )
        flat[name] = np.frombuffer(mm, dtype=dtype, count=count, offset=data_start + begin).reshape(
            shape
        )
    return flat
