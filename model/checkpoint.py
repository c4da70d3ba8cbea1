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
    tensor_sha256   JSON {name: sha256 of its bytes} (files written before it are checked by
                    content_sha256 alone)

Tables may be float32, bfloat16 or int8 with per-row scales (`model.tables`); every other
tensor is float32. Loading memory-maps the file and validates it without copying the tensors:
each parameter is a read-only numpy view of the mapping (the device transfer is the only
copy). `load_checkpoint(path, verify_tables=False)` checks the header, every shape and the
dense tensors' checksums but reads none of the tables' bytes, so a checkpoint of any size
opens in milliseconds; `verify_file` then checks the tables in one sequential read that does
not map them (a serving process's resident memory does not grow with it).
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

import ml_dtypes
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
from model.params import TABLE_PREFIX, TrainingState, flatten, unflatten, validate
from model.tables import TABLE_MODULE, table_bytes, table_dtype

FORMAT = "phoenix-ranking-checkpoint"
FORMAT_VERSION = "1"
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": ml_dtypes.bfloat16,
           "I8": np.int8, "I32": np.int32}  # fmt: skip
SAFETENSORS_DTYPES = {np.dtype(v).name: k for k, v in _DTYPES.items()}  # numpy name -> header
_READ_BYTES = 64 * 2**20  # verify_file's read size


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
    file_sha256: str  # sha256 of the whole file, as `sha256sum` prints it ("" until verified)
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

    @property
    def tables(self) -> dict[str, np.ndarray]:
        """The `hash_embeddings` subtree: the tables (and int8 scales), views of the file."""
        return self.state.params[TABLE_MODULE]

    @property
    def table_dtype(self) -> str:
        return table_dtype(self.tables)

    @property
    def table_bytes(self) -> int:
        return table_bytes(self.tables)


def tensor_prefix(name: str, dtype: np.dtype, shape) -> bytes:
    """What content_sha256 hashes before a tensor's bytes: its name, dtype and shape."""
    return f"{name}\0{np.dtype(dtype).str}\0{list(shape)}\0".encode()


def content_sha256(flat: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape, then the raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(flat):
        value = np.ascontiguousarray(flat[name])
        digest.update(tensor_prefix(name, value.dtype, value.shape))
        digest.update(_bytes(value))
    return digest.hexdigest()


def tensor_sha256(flat: Mapping[str, np.ndarray]) -> dict[str, str]:
    """{name: sha256 of the tensor's raw bytes}."""
    return {n: hashlib.sha256(_bytes(np.ascontiguousarray(v))).hexdigest() for n, v in flat.items()}


def _bytes(value: np.ndarray) -> memoryview:
    return memoryview(value.view(np.uint8).reshape(-1))


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
    metadata = header_metadata(config, model_version, created_at, content_sha256(flat),
                               tensor_sha256(flat))  # fmt: skip
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


def header_metadata(config: PhoenixModelConfig, model_version: str, created_at: str | None,
                    content: str, tensors: Mapping[str, str]) -> dict[str, str]:  # fmt: skip
    """The string metadata every checkpoint writer records."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "model_version": model_version,
        "created_at": created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "content_sha256": content,
        "tensor_sha256": json.dumps(dict(tensors), sort_keys=True),
    }


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


def load_checkpoint(path: str | os.PathLike, verify_tables: bool = True) -> Checkpoint:
    """Memory-map, validate and return a checkpoint; raises a CheckpointError subclass.

    The dense tensors are checked against their recorded checksums through the mapping
    (they are small); with verify_tables the whole file is then read once, sequentially and
    without mapping it, checking every tensor and computing `file_sha256`. verify_tables=False
    reads none of the tables' bytes and leaves `file_sha256` "" (`verify_file` checks them
    later). Files without per-tensor checksums are verified whole either way."""
    where = str(path)
    mm = _map(path, where)
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
    digests = _recorded_digests(metadata, flat, where)
    file_sha256 = ""
    if digests is None:  # an older file: one checksum over everything
        actual = content_sha256(flat)
        if actual != recorded:
            raise ChecksumMismatchError(
                f"{where}: tensor checksum {actual[:16]}... does not match the recorded "
                f"{recorded[:16] or '(none)'}...: the file is corrupt"
            )
        file_sha256 = _stream(path, {}, {})
    else:
        for name, value in flat.items():
            if not name.startswith(TABLE_PREFIX):
                _check_digest(where, name, hashlib.sha256(_bytes(value)).hexdigest(), digests)
        if verify_tables:
            file_sha256 = _stream(path, _ranges(header, data_start), digests)
    info = CheckpointInfo(
        model_version=metadata.get("model_version", ""),
        created_at=metadata.get("created_at", ""),
        content_sha256=recorded,
        file_sha256=file_sha256,
        format_version=FORMAT_VERSION,
        path=where,
    )
    return Checkpoint(TrainingState(unflatten(flat)), config, rows, info)


def verify_file(path: str | os.PathLike) -> str:
    """Check every tensor of a checkpoint against its recorded checksums in one sequential
    read (plain reads, not the mapping); returns the file's sha256. Raises
    ChecksumMismatchError naming the first tensor that differs."""
    return load_checkpoint(path, verify_tables=True).info.file_sha256


def _ranges(header: dict, data_start: int) -> dict[str, tuple[int, int]]:
    """Tensor name -> its byte range in the file."""
    return {n: (data_start + e["data_offsets"][0], data_start + e["data_offsets"][1])
            for n, e in header.items()}  # fmt: skip


def _stream(path, ranges: Mapping[str, tuple[int, int]], digests: Mapping[str, str]) -> str:
    """One sequential read of the file: its sha256, after checking each tensor in `ranges`
    against `digests`. Plain reads: the pages are not mapped into this process."""
    where = str(path)
    whole, running = hashlib.sha256(), {n: hashlib.sha256() for n in ranges}
    spans = sorted((begin, end, name) for name, (begin, end) in ranges.items())
    buffer = bytearray(_READ_BYTES)
    with open(path, "rb", buffering=0) as f:
        offset = 0
        while count := f.readinto(buffer):
            chunk = memoryview(buffer)[:count]
            whole.update(chunk)
            for begin, end, name in spans:
                lo, hi = max(begin, offset), min(end, offset + count)
                if lo < hi:
                    running[name].update(chunk[lo - offset : hi - offset])
            offset += count
    for name in sorted(ranges):
        _check_digest(where, name, running[name].hexdigest(), digests)
    return whole.hexdigest()


def release_pages(view: np.ndarray) -> None:
    """Drop the pages under `view`, a view of a mapped checkpoint, from this process's
    resident memory (they stay in the kernel's page cache; touching them again maps them
    back). No-op for an array that is not a view of a mapping."""
    mm = view
    while isinstance(mm, np.ndarray | memoryview):
        mm = mm.base if isinstance(mm, np.ndarray) else mm.obj
    if not isinstance(mm, mmap.mmap) or view.nbytes == 0:
        return
    start = view.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    mm.madvise(mmap.MADV_DONTNEED, first, start + view.nbytes - first)


def _map(path: str | os.PathLike, where: str) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise NotACheckpointError(f"{where}: file is empty")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise NotACheckpointError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise NotACheckpointError(f"{where}: is a directory") from None


def _recorded_digests(metadata: dict, flat: Mapping, where: str) -> dict[str, str] | None:
    """The recorded per-tensor sha256s (None for files written before them)."""
    if "tensor_sha256" not in metadata:
        return None
    try:
        digests = json.loads(metadata["tensor_sha256"])
    except (TypeError, json.JSONDecodeError):
        raise NotACheckpointError(f"{where}: tensor_sha256 metadata is not JSON") from None
    if not isinstance(digests, dict) or set(digests) != set(flat):
        raise NotACheckpointError(f"{where}: tensor_sha256 does not name every tensor")
    return digests


def _check_digest(where: str, name: str, actual: str, digests: Mapping[str, str]) -> None:
    if actual != digests[name]:
        raise ChecksumMismatchError(
            f"{where}: {name}'s checksum {actual[:16]}... does not match the recorded "
            f"{str(digests[name])[:16]}...: the file is corrupt"
        )


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
            raise ParameterDtypeError(
                f"{where}: {name} is {dtype_name}; tensors are float32 (tables may also be "
                "bfloat16, or int8 with per-row scales)"
            )
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
