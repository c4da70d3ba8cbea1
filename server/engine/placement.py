"""Where the hash tables live, and gathering a call's rows from host memory.

Glossary: R prefix rows, S history slots, B chunk rows, C candidate slots, D width, G rows
gathered for one call of one table, U/I/Au hashes per user/post/author id.

Placements (`--table-placement`):
  device   the tables are copied to every device (or split by rows over them,
           `--table-sharding rows`); an int8 table is dequantized on the device, row by row
           as the lookup reads it.
  host     the tables stay memory-mapped from the checkpoint file (nothing is read at start).
           For each call the host gathers the rows its ids name (`gather`): the unique rows
           of each table, row 0 first, into a small table of a fixed size per call shape
           (`gathered_rows`), and rewrites the ids as positions in it. The model's lookup is
           the same `jnp.take`, on the gathered table; padding stays row 0, so the masks are
           unchanged, and the logits equal device placement's (int8 rows are dequantized
           on the host the same way). Only the gathered rows travel to the device.
  auto     host when the tables would take more than `table_device_share` of one device's
           memory (`choose`), device otherwise; split by rows (`--table-sharding rows`), a
           device holds 1/N of them, and that is what is weighed.

Gathering reads the mapping, which maps the pages it touches into this process: not one page
a row but the kernel's fault-around window, or a whole large folio where the file was written
in large blocks (measured on Linux 6.18, ext4: 1,000 random 2 KiB rows of a cached 1 GB file
mapped 66 MB when written 4 KiB at a time, 833 MB when written 32 MiB at a time). So
`HostTables` measures rather than estimates: after each gather it reads the process's
resident file-backed memory (`/proc/self/statm`, about 10 us) and, when it has grown by
`RELEASE_BYTES` since the last release, drops the mapped tables' pages from the process (they
stay in the kernel's page cache). Resident memory stays within `RELEASE_BYTES` (plus one
call's rows) of the rest of the process however large the tables are.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from model.checkpoint import release_pages
from model.tables import TABLES, host_lookup, numpy_dtype, scale_name, table_dtype
from request.columns import SCHEMA, Part
from server.engine.mapped_file import MappedFile
from server.scheduling.buckets import BatchShape

RELEASE_BYTES = 256 * 2**20  # growth of mapped file memory that triggers a release


def choose(placement: str, table_bytes: int, device_bytes: int | None, share: float,
           devices: int = 1, sharding: str = "replicated") -> str:  # fmt: skip
    """ "device" or "host" for `placement` (auto: host when each device's part of the tables
    would exceed `share` of `device_bytes`: all of them replicated, 1/`devices` of them
    split by rows; a device that does not report its memory counts as large enough)."""
    if placement != "auto":
        return placement
    if device_bytes is None:
        return "device"
    per_device = table_bytes / devices if sharding == "rows" else table_bytes
    return "host" if per_device > share * device_bytes else "device"


def device_memory_bytes() -> int | None:
    """One device's memory: what the accelerator reports, or the machine's RAM on CPU."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def gathered_dtype(table_dtype: str) -> np.dtype:
    """The dtype of gathered rows for a checkpoint's `table_dtype`: bfloat16 stays bfloat16;
    int8 is dequantized to float32 on the host, and tables of mixed dtypes gather as float32."""
    return numpy_dtype("bfloat16" if table_dtype == "bfloat16" else "float32")


def gathered_rows(shape: BatchShape, hashes: Mapping[str, int]) -> dict[str, int]:
    """Rows of each gathered table of a call of `shape` (row 0 and one per id slot): a prefix
    call reads user, post and author rows, a chunk call post and author rows (its user
    table is one padding row). `hashes`: hashes per id of each table."""
    out = {}
    for column in SCHEMA.columns:
        if column.table is None or column.part.prefix != shape.is_prefix:
            continue
        slots = shape.rows * (1 if column.part is Part.USER else
                              shape.history if shape.is_prefix else shape.candidates)  # fmt: skip
        out[column.table] = out.get(column.table, 1) + slots * hashes[column.table]
    return {t: out.get(t, 1) for t in TABLES}


def resident_file_bytes() -> int | None:
    """This process's resident file-backed (and shared) memory in bytes, None off Linux."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def gathered_spec(shape: BatchShape, hashes: Mapping[str, int], width: int,
                  dtype: np.dtype) -> dict[str, tuple[tuple[int, int], np.dtype]]:  # fmt: skip
    """{table: ((G, D), dtype)} of the gathered tables of a call of `shape`."""
    rows = gathered_rows(shape, hashes)
    return {t: ((rows[t], width), np.dtype(dtype)) for t in TABLES}


@dataclass(frozen=True)
class Gathered:
    """A call's inputs with their ids rewritten, and the rows they now index."""

    inputs: object  # PrefixInputs or CandidateInputs, ids as positions in `tables`
    tables: dict[str, np.ndarray]  # table -> [G, D] gathered rows (row 0: padding)
    rows: int  # distinct rows gathered, over all tables


class HostTables:
    """A version's tables, mapped from its checkpoint file (`Checkpoint.tables`)."""

    def __init__(self, tables: Mapping[str, np.ndarray], hashes: Mapping[str, int],
                 file: MappedFile | None = None):  # fmt: skip
        """`file`: the mapped file, watched for changes (`server.engine.mapped_file`): every read of
        the tables goes through it, and raises `Withdrawn` once it has changed."""
        self.tables = dict(tables)
        self.hashes = dict(hashes)
        self.file = file
        self.dtype = gathered_dtype(table_dtype(self.tables))
        self.width = int(self.tables[TABLES[0]].shape[1])
        self._baseline = resident_file_bytes() or 0  # just after the last release
        self._lock = threading.Lock()

    def spec(self, shape: BatchShape) -> dict[str, tuple[tuple[int, int], np.dtype]]:
        """The gathered tables' shapes and dtype for a call of `shape` (`gathered_spec`)."""
        return gathered_spec(shape, self.hashes, self.width, self.dtype)

    def gather(self, shape: BatchShape, inputs) -> Gathered:
        """The unique rows `inputs` (PrefixInputs or CandidateInputs of `shape`) name, per
        table, and the inputs rewritten to index them (see the module docstring)."""
        with self.file.reading() if self.file is not None else contextlib.nullcontext():
            gathered = self._gather(shape, inputs)
        self._bound_resident()
        return gathered

    def _gather(self, shape: BatchShape, inputs) -> Gathered:
        sizes = gathered_rows(shape, self.hashes)
        replaced, tables, total = {}, {}, 0
        fields = inputs._fields
        for table in TABLES:
            columns = [c.name for c in SCHEMA.columns if c.table == table and c.name in fields]
            out = np.zeros((sizes[table], self.width), self.dtype)
            if columns:
                ids = [getattr(inputs, name) for name in columns]
                unique = np.unique(np.concatenate([np.zeros(1, np.int32), *map(np.ravel, ids)]))
                out[: len(unique)] = host_lookup(self.tables, table, unique)
                for name, values in zip(columns, ids, strict=True):
                    replaced[name] = np.searchsorted(unique, values).astype(np.int32)
                total += len(unique) - 1
            tables[table] = out
        return Gathered(inputs._replace(**replaced), tables, total)

    def _bound_resident(self) -> None:
        """Release the mapped pages once they have grown by RELEASE_BYTES (every call where
        the process's memory cannot be read)."""
        with self._lock:
            now = resident_file_bytes()
            if now is not None and now - self._baseline < RELEASE_BYTES:
                return
            self.release()
            self._baseline = resident_file_bytes() or 0

    def release(self) -> None:
        """Drop the mapped tables' pages from this process's resident memory."""
        for table in TABLES:
            release_pages(self.tables[table])
            if scale_name(table) in self.tables:
                release_pages(self.tables[scale_name(table)])
