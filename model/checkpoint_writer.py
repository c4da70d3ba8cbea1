"""Writing a checkpoint one block of rows at a time, so a file of any size needs little memory.

The file is `model.checkpoint`'s format. Its header, which records the checksums, comes
before the data; every field of it has a known length before the data is written (a sha256
is 64 hex digits), so the writer reserves the header, streams the tensors in name order
while hashing them (the order `content_sha256` hashes in), then writes the header in place.
The file appears at its path, atomically, only when it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from model.checkpoint import (
    SAFETENSORS_DTYPES,
    CheckpointInfo,
    header_metadata,
    load_checkpoint,
    tensor_prefix,
)
from model.config import PhoenixModelConfig

Spec = tuple[np.dtype, tuple[int, ...]]  # a tensor's dtype and shape

_NO_DIGEST = "0" * 64


class StreamingWriter:
    """`with StreamingWriter(path, specs, config, version) as w: w.write(name, block) ...`

    Tensors are written in sorted name order, each as blocks of whole leading-axis rows; a
    block's dtype must be its tensor's. `close` (the end of the `with`) checks every tensor
    was written whole, records the checksums, and moves the file into place; an exception
    inside the `with` leaves nothing at `path`."""

    def __init__(self, path: str | os.PathLike, specs: Mapping[str, Spec],
                 config: PhoenixModelConfig, model_version: str,
                 created_at: str | None = None):  # fmt: skip
        self.path = Path(path)
        self._order = sorted(specs)
        self._specs = {n: (np.dtype(d), tuple(s)) for n, (d, s) in specs.items()}
        self._config, self._version, self._created_at = config, model_version, created_at
        self._sizes = {n: int(np.prod(s, dtype=np.int64)) * d.itemsize
                       for n, (d, s) in self._specs.items()}  # fmt: skip
        header = self._header(_NO_DIGEST, dict.fromkeys(self._order, _NO_DIGEST))
        self._header_len = len(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                         suffix=".tmp")  # fmt: skip
        os.chmod(self._tmp, 0o644)
        self._file = os.fdopen(fd, "wb")
        self._file.write(struct.pack("<Q", len(header)) + header)
        self._content = hashlib.sha256()
        self._digests: dict[str, str] = {}
        self._current: tuple[str, hashlib._Hash, int] | None = None  # name, digest, bytes left
        self._next = 0

    def _header(self, content: str, tensors: Mapping[str, str]) -> bytes:
        entries, offset = {}, 0
        for name in self._order:
            dtype, shape = self._specs[name]
            size = self._sizes[name]
            entries[name] = {"dtype": SAFETENSORS_DTYPES[dtype.name], "shape": list(shape),
                             "data_offsets": [offset, offset + size]}  # fmt: skip
            offset += size
        meta = header_metadata(self._config, self._version, self._created_at, content, tensors)
        entries["__metadata__"] = meta
        text = json.dumps(entries, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)  # the data starts 8-byte aligned

    def write(self, name: str, block: np.ndarray) -> None:
        """Append `block` (whole rows of `name`, in order) to the file."""
        if self._current is None:
            self._start(name)
            if self._current is None:  # an empty tensor: written whole already
                return
        current, digest, left = self._current
        if name != current:
            raise ValueError(f"{name}: {current} is not complete ({left} bytes to write)")
        dtype, shape = self._specs[name]
        block = np.ascontiguousarray(block)
        if block.dtype != dtype or block.shape[1:] != shape[1:]:
            raise ValueError(f"{name}: block {block.dtype} {block.shape} for {dtype} {shape}")
        data = memoryview(block.view(np.uint8).reshape(-1))
        if len(data) > left:
            raise ValueError(f"{name}: {len(data) - left} bytes past its end")
        self._file.write(data)
        self._content.update(data)
        digest.update(data)
        self._current = (name, digest, left - len(data)) if left > len(data) else None
        if self._current is None:
            self._digests[name] = digest.hexdigest()

    def _start(self, name: str) -> None:
        if self._next >= len(self._order) or name != self._order[self._next]:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise ValueError(f"{name}: tensors are written in name order; next is {expected}")
        self._next += 1
        dtype, shape = self._specs[name]
        self._content.update(tensor_prefix(name, dtype, shape))
        self._current = (name, hashlib.sha256(), self._sizes[name])
        if self._sizes[name] == 0:
            self._digests[name], self._current = hashlib.sha256().hexdigest(), None

    def close(self) -> CheckpointInfo:
        """Record the checksums and move the file into place; returns what it says of itself
        (read back without reading its tables)."""
        missing = [n for n in self._order if n not in self._digests]
        if missing:
            raise ValueError(f"{self.path}: tensors not written whole: {missing}")
        header = self._header(self._content.hexdigest(), self._digests)
        assert len(header) == self._header_len  # every digest has the placeholder's length
        self._file.seek(8)
        self._file.write(header)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return load_checkpoint(self.path, verify_tables=False).info

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.info = self.close()
        else:
            self.abort()
