"""Arrow IPC streams read message by message, each checked from its metadata before pyarrow
decodes, decompresses or allocates a byte of it.

A stream (Arrow's format/Message.fbs, Schema.fbs) is a sequence of messages, each a
flatbuffer `Message` and a body. pyarrow's MessageReader frames them (it checks that each
metadata and body lies within the bytes, and verifies the flatbuffer) without decoding
either; this module reads the headers it needs with a small flatbuffer reader of its own
(`Table`, every offset bounds-checked).

The first message is a Schema: little-endian, at most MAX_COLUMNS columns, and only
fixed-width columns (integers, floats, booleans, temporal types, and fixed-size lists of them
nested at most MAX_DEPTH deep), so that every buffer's size follows from the row count alone.
Each later message must be a RecordBatch (at most MAX_BATCHES), checked before pyarrow reads
it:

* its row count, all batches together at most `max_rows`;
* one FieldNode per array of the schema (a column, then its list's child), each exactly as
  long as the rows make it (a fixed-size list's child: rows x its list size), with a null
  count within that;
* one Buffer per buffer of the schema's layout (validity, then values), each inside the body
  and as large as its array needs;
* a compressed body (BodyCompression, LZ4_FRAME or ZSTD, one buffer at a time): each
  buffer's int64 little-endian uncompressed-length prefix the size the buffer must have (or
  up to its 64-byte padding more; -1: stored uncompressed), the prefixes' sum drawn from the
  call's `inflate.Budget` before pyarrow allocates any of it.

Dictionary batches, tensors and view types are refused. Only then does pyarrow read the
batch (`pyarrow.ipc.read_record_batch`), and validate it fully.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import NamedTuple

from server.contracts.inflate import Budget
from server.errors import InvalidArgument

MAX_BATCHES = 64  # record batches per stream: a writer sends one, or a few
MAX_COLUMNS = 64  # fields of the schema
MAX_DEPTH = 4  # fixed-size lists nested in one column

_CODECS = {0: "LZ4_FRAME", 1: "ZSTD"}  # BodyCompression's CompressionType


class StreamError(ValueError):
    """What is wrong with a stream; `read_stream` names the entry it came in."""


class ColumnError(ValueError):
    """A column its reader cannot use; `read_stream` names it `<entry>.<column>`."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


# -- a flatbuffer reader -------------------------------------------------------------------


I8, U8, I16, U16, I32, U32, I64 = (struct.Struct(f"<{c}") for c in "bBhHiIq")
PAIR = struct.Struct("<qq")  # FieldNode {length, null_count}, Buffer {offset, length}


def _unpack(buf: memoryview, at: int, kind: struct.Struct):
    """The value of `kind` at `at`; StreamError when it lies outside `buf`."""
    if at < 0 or at + kind.size > len(buf):
        raise StreamError(f"metadata offset {at} is outside its {len(buf)} bytes")
    return kind.unpack_from(buf, at)[0]


class Table:
    """A flatbuffer table: its fields by index (their order in the .fbs schema), read through
    its vtable; every offset checked against the buffer."""

    __slots__ = ("buf", "at", "vtable", "vsize")

    def __init__(self, buf: memoryview, at: int):
        self.buf, self.at = buf, at
        self.vtable = at - _unpack(buf, at, I32)
        self.vsize = _unpack(buf, self.vtable, U16)  # the vtable's bytes, these 2 included
        if self.vtable + self.vsize > len(buf):
            raise StreamError(f"a vtable of {self.vsize} bytes past the metadata's end")

    @classmethod
    def root(cls, buf: memoryview) -> Table:
        return cls(buf, _unpack(buf, 0, U32))

    def position(self, index: int) -> int | None:
        """Where field `index` is stored; None when absent (it has its default)."""
        slot = 4 + 2 * index
        if slot + 2 > self.vsize:
            return None
        offset = U16.unpack_from(self.buf, self.vtable + slot)[0]  # inside: checked above
        return self.at + offset if offset else None

    def scalar(self, index: int, kind: struct.Struct, default: int = 0) -> int:
        at = self.position(index)
        return default if at is None else _unpack(self.buf, at, kind)

    def _target(self, index: int) -> int | None:
        at = self.position(index)
        return None if at is None else at + _unpack(self.buf, at, U32)

    def table(self, index: int) -> Table | None:
        at = self._target(index)
        return None if at is None else Table(self.buf, at)

    def count(self, index: int, kind: struct.Struct) -> tuple[int, int]:
        """(where the elements start, how many) of a vector of `kind`; (0, 0) when absent.
        The elements are checked to lie inside the buffer."""
        at = self._target(index)
        if at is None:
            return 0, 0
        count = _unpack(self.buf, at, U32)
        if count:
            _unpack(self.buf, at + 4 + count * kind.size - 1, U8)
        return at + 4, count

    def vector(self, index: int, kind: struct.Struct) -> list[tuple]:
        """The elements of a vector of `kind` (structs or scalars); empty when absent."""
        start, count = self.count(index, kind)
        return list(kind.iter_unpack(self.buf[start : start + count * kind.size]))


# -- the layout of fixed-width columns -----------------------------------------------------


class Array(NamedTuple):
    """One array of a record batch, in the stream's order (a column, then its list's child):
    its length per row and the bits of each value (None: a fixed-size list, which has no
    values buffer of its own)."""

    column: str
    per_row: int
    value_bits: int | None


def layout(schema) -> list[Array]:
    """A schema's arrays, depth first; StreamError for a column that is not fixed-width."""
    import pyarrow as pa

    fixed_width = _fixed_width_types()
    out: list[Array] = []
    for field in schema:
        kind, per_row = field.type, 1
        for _ in range(MAX_DEPTH + 1):
            if kind.id != pa.lib.Type_FIXED_SIZE_LIST:
                break
            out.append(Array(field.name, per_row, None))
            kind, per_row = kind.value_type, per_row * kind.list_size
        if kind.id not in fixed_width:
            raise StreamError(f"column {field.name!r} is {field.type}: only fixed-width columns "
                              "(integers, floats, booleans, temporal types, fixed-size lists "
                              f"of them nested at most {MAX_DEPTH} deep) are read")  # fmt: skip
        out.append(Array(field.name, per_row, kind.bit_width))
    return out


@functools.cache
def _fixed_width_types() -> frozenset[int]:
    """The pyarrow type ids of the fixed-width types read: one values buffer each."""
    import pyarrow as pa

    names = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
             "HALF_FLOAT", "FLOAT", "DOUBLE", "DATE32", "DATE64", "TIMESTAMP", "TIME32",
             "TIME64", "DURATION")  # fmt: skip
    return frozenset(getattr(pa.lib, f"Type_{name}") for name in names)


# -- checks before pyarrow reads -----------------------------------------------------------


def _header(message) -> Table:
    """The Schema or RecordBatch table of a pyarrow Message: its flatbuffer's `header`."""
    header = Table.root(memoryview(message.metadata)).table(2)
    if header is None:
        raise StreamError(f"a {message.type} message without its header")
    return header


def check_schema(message) -> None:
    """A Schema message, before pyarrow reads it: little-endian, at most MAX_COLUMNS."""
    if message.type != "schema":
        raise StreamError(f"the first message is a {message.type}, not a schema")
    header = _header(message)
    if header.scalar(0, I16):  # Endianness: 0 little, 1 big
        raise StreamError("the stream is big-endian")
    _, fields = header.count(1, U32)
    if fields > MAX_COLUMNS:
        raise StreamError(f"{fields} columns, more than {MAX_COLUMNS}")


def batch_rows(message) -> tuple[Table, int]:
    """A RecordBatch message's header and row count; StreamError for another kind of message
    or a negative count."""
    if message.type != "record batch":
        raise StreamError(f"a {message.type} message: after the schema only record batches "
                          "are read")  # fmt: skip
    batch = _header(message)
    rows = batch.scalar(0, I64)
    if rows < 0:
        raise StreamError(f"a batch of {rows} rows")
    return batch, rows


def check_batch(batch: Table, body, rows: int, arrays: list[Array]) -> int:
    """A RecordBatch (its header `batch`, its `body`, a pyarrow Buffer or None) of `rows` rows
    checked against the schema's `arrays`, from its metadata and its buffers' length prefixes
    alone: the bytes its compressed buffers inflate to. StreamError naming what is wrong."""
    if batch.count(4, I64)[1]:
        raise StreamError("variadic buffers (view types) are not read")
    nodes, buffers = batch.vector(1, PAIR), batch.vector(2, PAIR)
    wanted = sum(2 if a.value_bits is not None else 1 for a in arrays)
    if len(nodes) != len(arrays) or len(buffers) != wanted:
        raise StreamError(f"{len(nodes)} field nodes and {len(buffers)} buffers; the schema "
                          f"has {len(arrays)} and {wanted}")  # fmt: skip
    compression = batch.table(3)
    if compression is not None:
        codec, method = compression.scalar(0, I8), compression.scalar(1, I8)
        if codec not in _CODECS or method != 0:  # BodyCompressionMethod BUFFER
            raise StreamError(f"compression codec {codec}, method {method}: LZ4_FRAME or ZSTD "
                              "of each buffer are read")  # fmt: skip
    body = memoryview(body if body is not None else b"")
    compressed, inflated, at = compression is not None, 0, 0
    for array, (length, nulls) in zip(arrays, nodes, strict=True):
        if length != rows * array.per_row or not 0 <= nulls <= length:
            raise StreamError(f"column {array.column!r}: a field node of {length} values "
                              f"({nulls} null), {rows * array.per_row} expected for {rows} "
                              "rows")  # fmt: skip
        bitmap = (length + 7) // 8  # validity: may be absent when no value is null
        inflated += _check_buffer(body, buffers[at], bitmap if nulls else 0, bitmap,
                                  compressed, array.column)  # fmt: skip
        if array.value_bits is not None:
            values = (length * array.value_bits + 7) // 8
            inflated += _check_buffer(body, buffers[at + 1], values, values, compressed,
                                      array.column)  # fmt: skip
            at += 1
        at += 1
    return inflated


def _check_buffer(body: memoryview, buffer: tuple[int, int], need: int, full: int,
                  compressed: bool, column: str) -> int:  # fmt: skip
    """One buffer (offset, size) of at least `need` bytes (`full`: its size when present):
    inside the body, and when compressed its length prefix `full` or up to its 64-byte
    padding more (a writer may compress the padding too). The bytes it inflates to (0 when
    stored uncompressed)."""
    offset, size = buffer
    if offset < 0 or size < 0 or offset + size > len(body):
        raise StreamError(f"column {column!r}: a buffer of {size} bytes at {offset}, outside "
                          f"the body of {len(body)}")  # fmt: skip
    if compressed and size:  # an empty buffer is never compressed
        if size < 8:
            raise StreamError(f"column {column!r}: a compressed buffer of {size} bytes, "
                              "shorter than its length prefix")  # fmt: skip
        declared, size = _unpack(body, offset, I64), size - 8
        if declared != -1:  # -1: stored uncompressed after the prefix
            if not need <= declared <= -(-full // 64) * 64:
                raise StreamError(f"column {column!r}: a compressed buffer declaring "
                                  f"{declared} bytes, {full} expected")  # fmt: skip
            return declared
    if size < need:
        raise StreamError(f"column {column!r}: a buffer of {size} bytes, {need} needed")
    return 0


# -- reading -------------------------------------------------------------------------------


# Schemas already checked, by their metadata bytes and column check: a caller sends the same
# schema call after call. Emptied when full.
MAX_SCHEMAS = 64
_schemas: dict[tuple[bytes, Callable], tuple[object, list[Array]]] = {}


def schema_of(message, check_columns: Callable[[object], None]) -> tuple[object, list[Array]]:
    """A Schema message's pyarrow schema and arrays, checked (`check_schema`, then
    `check_columns`, then `layout`) the first time its bytes are seen."""
    import pyarrow as pa
    import pyarrow.ipc

    key = (bytes(message.metadata), check_columns)
    found = _schemas.get(key)
    if found is None:
        check_schema(message)
        schema = pa.ipc.read_schema(message)
        check_columns(schema)
        found = (schema, layout(schema))
        if len(_schemas) >= MAX_SCHEMAS:
            _schemas.clear()
        _schemas[key] = found
    return found


def read_stream(data: bytes, where: str, max_rows: int, budget: Budget,
                check_columns: Callable[[object], None]) -> tuple[object, list]:  # fmt: skip
    """An Arrow IPC stream's (schema, record batches), every message checked before pyarrow
    reads it (see the module's docstring) and every batch then fully validated.
    `check_columns(schema)` refuses the columns its caller cannot use (ColumnError);
    `max_rows` bounds the rows of all batches (the caller's Limits.max_history_events);
    compressed buffers draw from `budget`. InvalidArgument naming `where` (or the column in
    it) otherwise."""
    import pyarrow as pa
    import pyarrow.ipc

    try:
        schema, arrays, batches, rows = None, [], [], 0
        for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
            if schema is None:
                schema, arrays = schema_of(message, check_columns)
                continue
            if len(batches) == MAX_BATCHES:
                raise StreamError(f"more than {MAX_BATCHES} record batches")
            header, count = batch_rows(message)
            if rows + count > max_rows:
                raise InvalidArgument(where, f"{rows + count} rows exceed max_history_events="
                                      f"{max_rows}")  # fmt: skip
            budget.draw(check_batch(header, message.body, count, arrays), where)
            batch = pa.ipc.read_record_batch(message, schema)
            batch.validate(full=True)
            rows += count
            batches.append(batch)
        if schema is None:
            raise StreamError("no schema message")
        return schema, batches
    except ColumnError as e:
        raise InvalidArgument(f"{where}.{e.column}", str(e)) from None
    except StreamError as e:
        raise InvalidArgument(where, f"not a valid Arrow IPC stream: {e}") from None
    except (pa.ArrowException, ValueError, TypeError, OSError) as e:  # UnicodeDecodeError too
        raise InvalidArgument(where, f"not a valid Arrow IPC stream ({e})") from None
