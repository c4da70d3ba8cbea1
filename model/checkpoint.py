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

A file's bytes are untrusted until checked, and every failure is a `CheckpointError` subclass
naming the file and the tensor or field: only a regular file is opened (never a FIFO or a
device) and it must map (sysfs and procfs files do not); the header's JSON may nest 4 deep,
checked before it is parsed; each entry is exactly {dtype, shape, data_offsets}: a known dtype,
at most 8 sizes, a byte range that holds them; the tensors tile the data section as
safetensors requires (no overlap, no gap, nothing after the last); `__metadata__` maps strings
to strings, and the JSON inside it is checked like the header.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import math
import mmap
import os
import reprlib
import stat
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np
import safetensors.numpy

from model.config import ConfigError, PhoenixModelConfig
from model.errors import (
    CheckpointError,
    ChecksumMismatchError,
    IncompatibleConfigError,
    MissingParameterError,
    NotACheckpointError,
    ParameterDtypeError,
    TruncatedCheckpointError,
    UnreadableCheckpointError,
)
from model.params import TABLE_PREFIX, TrainingState, flatten, unflatten, validate
from model.tables import TABLE_MODULE, table_bytes, table_dtype
from request.hashing import TableRows

FORMAT = "phoenix-ranking-checkpoint"
FORMAT_VERSION = "1"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit (its MAX_HEADER_SIZE)
_MAX_JSON_DEPTH = 4  # nesting of the header ({name: {"shape": [...]}}: 3) and the config (2)
_MAX_RANK = 8  # dimensions of a tensor (ours have at most 2)
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}  # a header entry's, exactly
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": ml_dtypes.bfloat16,
           "I8": np.int8, "I32": np.int32}  # fmt: skip
SAFETENSORS_DTYPES = {np.dtype(v).name: k for k, v in _DTYPES.items()}  # numpy name -> header
_READ_BYTES = 64 * 2**20  # verify_file's read size
_DEPTH_BLOCK = 2**20  # bytes of JSON whose nesting is measured at a time
_DEPTH_STEP = np.zeros(256, np.int8)  # byte -> its change to the nesting depth
_DEPTH_STEP[[ord("["), ord("{")]], _DEPTH_STEP[[ord("]"), ord("}")]] = 1, -1
_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}  # fmt: skip
_REPR = reprlib.Repr()  # values from a file, shortened for error messages
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


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


def load_checkpoint(path: str | os.PathLike, verify_tables: bool = True) -> Checkpoint:
    """Memory-map, validate and return a checkpoint; raises a CheckpointError subclass.

    The dense tensors are checked against their recorded checksums through the mapping
    (they are small); with verify_tables the whole file is then read once, sequentially and
    without mapping it, checking every tensor and computing `file_sha256`. verify_tables=False
    reads none of the tables' bytes and leaves `file_sha256` "" (`verify_file` checks them
    later). Files without per-tensor checksums are verified whole either way."""
    where = str(path)
    fd = _open(path, where)
    try:
        return _load(fd, where, verify_tables)
    finally:
        os.close(fd)


def _load(fd: int, where: str, verify_tables: bool) -> Checkpoint:
    mm = _map(fd, where)
    header, data_start = _read_header(mm, where)
    metadata, config = _metadata(header, where)
    tensors = {name: _entry(name, entry, data_start, len(mm), where)
               for name, entry in header.items()}  # fmt: skip
    flat = _tensor_views(mm, tensors, data_start)
    rows = _validate(flat, config, where)  # first: a missing tensor is named, not its gap
    _check_layout(tensors, len(mm) - data_start, where)
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
        file_sha256 = _stream(fd, len(mm), {}, {}, where)
    else:
        for name, value in flat.items():
            if not name.startswith(TABLE_PREFIX):
                _check_digest(where, name, hashlib.sha256(_bytes(value)).hexdigest(), digests)
        if verify_tables:
            file_sha256 = _stream(fd, len(mm), _ranges(tensors, data_start), digests, where)
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


# -- reading the file: every byte of it is untrusted until checked ------------------------------


def _open(path: str | os.PathLike, where: str) -> int:
    """A read-only descriptor of the regular file at `path` (a symlink to one is fine).
    Anything else is refused before it is opened (opening a FIFO can block, a device can act),
    and what was opened is checked again (the name may have changed meanwhile)."""
    try:
        _check_regular(os.stat(path).st_mode, where)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise NotACheckpointError(f"{where}: no such file") from None
    except OSError as e:
        raise UnreadableCheckpointError(f"{where}: cannot open it: {e.strerror or e}") from None
    try:
        _check_regular(os.fstat(fd).st_mode, where)
    except NotACheckpointError:
        os.close(fd)
        raise
    return fd


def _check_regular(mode: int, where: str) -> None:
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotACheckpointError(f"{where}: is {kind}, not a checkpoint file")


def _map(fd: int, where: str) -> mmap.mmap:
    """The whole file, mapped read-only. sysfs and procfs files claim a size their reads do
    not have: they cannot be mapped (ENODEV), or report 0 bytes."""
    if os.fstat(fd).st_size == 0:
        raise NotACheckpointError(f"{where}: file is empty")
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except ValueError:  # emptied since the fstat
        raise NotACheckpointError(f"{where}: file is empty") from None
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise NotACheckpointError(
                f"{where}: cannot be memory-mapped (a sysfs, procfs or device file?)"
            ) from None
        raise UnreadableCheckpointError(f"{where}: cannot map it: {e.strerror or e}") from None


def _read_header(mm: mmap.mmap, where: str) -> tuple[dict, int]:
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
    header = _json(mm[8 : 8 + header_len], f"{where}: not a safetensors file: its header")
    if not isinstance(header, dict):
        raise NotACheckpointError(f"{where}: not a safetensors file (header is not an object)")
    return header, 8 + header_len


def _json(text: bytes, what: str, error: type[CheckpointError] = NotACheckpointError):
    """UTF-8 JSON read from a file, its nesting checked before it is parsed (json.loads
    recurses once per level); `error` naming `what` if it is not JSON or nests too deep."""
    if json_nests_deeper(text, _MAX_JSON_DEPTH):
        raise error(f"{what} nests deeper than {_MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text.decode())
    except ValueError as e:  # not UTF-8, not JSON, or an integer of over 4,300 digits
        raise error(f"{what} is not JSON ({_brief(str(e))})") from None


def json_nests_deeper(text: bytes, limit: int) -> bool:
    """Whether the arrays and objects of JSON `text` nest deeper than `limit`; brackets in
    strings do not count (a backslash escapes the next byte: JSON has none outside strings).
    Vectorised over blocks of _DEPTH_BLOCK bytes: any text costs at most ~20 ms a MB (a valid
    header's few KB, ~60 us; a regular expression over strings is quadratic on some texts)
    and no more memory than a few blocks."""
    data = np.frombuffer(text, np.uint8)
    depth = inside = run = 0  # carried from block to block: nesting, in a string, backslashes
    for start in range(0, len(data), _DEPTH_BLOCK):
        block = data[start : start + _DEPTH_BLOCK]
        quote = block == ord('"')
        backslash = block == ord("\\")
        if run or backslash.any():
            index = np.arange(len(block))
            last = np.maximum.accumulate(np.where(backslash, -1, index))
            runs = index - last  # backslashes in a row ending at each byte (0: not one)
            runs[last < 0] += run
            quote &= np.concatenate(([run], runs[:-1])) % 2 == 0  # an escaped quote is text
            run = int(runs[-1])
        quotes = np.cumsum(quote, dtype=np.int32) + inside
        steps = np.where(quotes % 2 == 0, _DEPTH_STEP[block], 0)  # [{ +1, ]} -1; not in strings
        levels = np.cumsum(steps, dtype=np.int32) + depth
        if levels.max() > limit:
            return True
        depth, inside = int(levels[-1]), int(quotes[-1]) % 2
    return False


def _metadata(header: dict, where: str) -> tuple[dict[str, str], PhoenixModelConfig]:
    """Pop `__metadata__` off the header and check it: ours, a version we read, a config."""
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise NotACheckpointError(f"{where}: __metadata__ is {_brief(metadata)}, not an object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise NotACheckpointError(
                f"{where}: __metadata__ {_brief(key)} is {_brief(value)}, not a string"
            )
    if metadata.get("format") != FORMAT:
        raise NotACheckpointError(
            f"{where}: a safetensors file without phoenix checkpoint metadata "
            "(use `phoenix-ranker import` for exchange files)"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise IncompatibleConfigError(
            f"{where}: checkpoint format version {_brief(metadata.get('format_version'))}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    text = metadata.get("config", "").encode(errors="surrogatepass")
    data = _json(text, f"{where}: the recorded config", IncompatibleConfigError)
    try:
        return metadata, PhoenixModelConfig.from_dict(data)
    except ConfigError as e:
        raise IncompatibleConfigError(f"{where}: {e}") from None


class _Tensor(NamedTuple):
    """A header entry, checked: its dtype and shape, and its bytes in the data section."""

    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data section, [begin, end)
    end: int


def _entry(name: str, entry, data_start: int, size: int, where: str) -> _Tensor:
    """Check one tensor's header entry ({dtype, shape, data_offsets}, nothing else) against
    the safetensors rules and the file's `size`."""
    at = f"{where}: tensor {_brief(name)}"
    if not isinstance(entry, dict) or entry.keys() != _ENTRY_KEYS:
        raise NotACheckpointError(f"{at}: {_brief(entry)} is not {{dtype, shape, data_offsets}}")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str):
        raise NotACheckpointError(f"{at}: dtype {_brief(dtype_name)} is not a string")
    if dtype_name not in _DTYPES:
        raise ParameterDtypeError(
            f"{at} is {_brief(dtype_name)}; tensors are float32 (tables may also be "
            "bfloat16, or int8 with per-row scales)"
        )
    if not (isinstance(shape, list) and len(shape) <= _MAX_RANK and all(map(_is_size, shape))):
        raise NotACheckpointError(
            f"{at}: shape {_brief(shape)} is not a list of at most {_MAX_RANK} sizes >= 0"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
        raise NotACheckpointError(f"{at}: data_offsets {_brief(offsets)} is not [begin, end]")
    begin, end = offsets
    if begin > end:
        raise NotACheckpointError(f"{at}: data_offsets [{begin}, {end}] end before they begin")
    if data_start + end > size:
        raise TruncatedCheckpointError(
            f"{where}: file is {size} bytes but {_brief(name)} ends at byte {data_start + end}"
        )
    dtype = np.dtype(_DTYPES[dtype_name])
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise NotACheckpointError(
            f"{at}: byte range [{begin}, {end}) does not hold shape {shape} of {dtype_name}"
        )
    return _Tensor(dtype, tuple(shape), begin, end)


def _is_size(value) -> bool:
    return type(value) is int and value >= 0  # not a bool, a float or a string


def _check_layout(tensors: Mapping[str, _Tensor], data_len: int, where: str) -> None:
    """The tensors' bytes tile the data section, as safetensors requires: in offset order each
    begins where the one before ends, the first at 0, the last at the end of the file."""
    offset, previous = 0, None
    for name, t in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if t.begin != offset:
            problem = (f"overlap {_brief(previous)}'s" if t.begin < offset else
                       f"leave {t.begin - offset} bytes unused before them")  # fmt: skip
            raise NotACheckpointError(
                f"{where}: tensor {_brief(name)}'s bytes [{t.begin}, {t.end}) {problem}"
            )
        offset, previous = t.end, name
    if offset != data_len:
        raise NotACheckpointError(f"{where}: {data_len - offset} bytes after the last tensor")


def _validate(flat: Mapping[str, np.ndarray], config: PhoenixModelConfig, where: str
              ) -> TableRows:  # fmt: skip
    """`model.params.validate`, guarded against configs the file may record that build no
    model: sizes that overflow when traced, or more layers than the file has tensors (each
    layer has its own; tracing one costs ~40 ms, so a config of 10**9 layers never ends)."""
    if config.model.num_layers > len(flat):
        raise MissingParameterError(f"{where}: the config has {config.model.num_layers} "
                                    f"layers but the file only {len(flat)} tensors")  # fmt: skip
    try:
        return validate(flat, config, where)
    except (ArithmeticError, TypeError, ValueError) as e:
        raise IncompatibleConfigError(f"{where}: the recorded config builds no model ({e})"
                                      ) from None  # fmt: skip


def _tensor_views(mm: mmap.mmap, tensors: Mapping[str, _Tensor], data_start: int
                  ) -> dict[str, np.ndarray]:  # fmt: skip
    """Read-only numpy views of the (checked) tensors: no copy."""
    return {name: np.frombuffer(mm, t.dtype, math.prod(t.shape), data_start + t.begin
                                ).reshape(t.shape) for name, t in tensors.items()}  # fmt: skip


def _ranges(tensors: Mapping[str, _Tensor], data_start: int) -> dict[str, tuple[int, int]]:
    """Tensor name -> its byte range in the file."""
    return {n: (data_start + t.begin, data_start + t.end) for n, t in tensors.items()}


def _stream(fd: int, size: int, ranges: Mapping[str, tuple[int, int]],
            digests: Mapping[str, str], where: str) -> str:  # fmt: skip
    """One sequential read of the file's `size` bytes: its sha256, after checking each tensor
    in `ranges` against `digests`. Plain reads: the pages are not mapped into this process."""
    whole, running = hashlib.sha256(), {n: hashlib.sha256() for n in ranges}
    spans = sorted((begin, end, name) for name, (begin, end) in ranges.items())
    buffer = memoryview(bytearray(_READ_BYTES))
    offset = 0
    while offset < size:
        try:
            count = os.preadv(fd, [buffer[: min(_READ_BYTES, size - offset)]], offset)
        except OSError as e:
            raise UnreadableCheckpointError(
                f"{where}: reading byte {offset}: {e.strerror or e}"
            ) from None
        if count == 0:
            raise TruncatedCheckpointError(f"{where}: ended at byte {offset} of {size} while read")
        chunk = buffer[:count]
        whole.update(chunk)
        for begin, end, name in spans:
            lo, hi = max(begin, offset), min(end, offset + count)
            if lo < hi:
                running[name].update(chunk[lo - offset : hi - offset])
        offset += count
    for name in sorted(ranges):
        _check_digest(where, name, running[name].hexdigest(), digests)
    return whole.hexdigest()


def _recorded_digests(metadata: dict, flat: Mapping, where: str) -> dict[str, str] | None:
    """The recorded per-tensor sha256s (None for files written before them)."""
    if "tensor_sha256" not in metadata:
        return None
    text = metadata["tensor_sha256"].encode(errors="surrogatepass")
    digests = _json(text, f"{where}: tensor_sha256 metadata")
    if not isinstance(digests, dict) or set(digests) != set(flat):
        raise NotACheckpointError(f"{where}: tensor_sha256 does not name every tensor")
    if not all(isinstance(d, str) for d in digests.values()):
        raise NotACheckpointError(f"{where}: tensor_sha256 has a digest that is not a string")
    return digests


def _check_digest(where: str, name: str, actual: str, digests: Mapping[str, str]) -> None:
    if actual != digests[name]:
        raise ChecksumMismatchError(
            f"{where}: {name}'s checksum {actual[:16]}... does not match the recorded "
            f"{digests[name][:16]}...: the file is corrupt"
        )


def _brief(value) -> str:
    """A value from the file, shown in an error message at most about 60 characters long."""
    return _REPR.repr(value)
