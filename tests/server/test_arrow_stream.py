"""Arrow IPC streams checked before pyarrow reads them (server/contracts/arrow_stream.py): what pyarrow
writes reads back as pyarrow reads it, every lie in a header is refused from the metadata,
and no bytes give anything but InvalidArgument."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import Limits
from server.contracts import arrow_stream, xai
from server.contracts.arrow_stream import I64, PAIR, StreamError, Table
from server.contracts.inflate import Budget
from server.errors import InvalidArgument
from tests.helpers import random_request
from tests.server import hostile, xai_forms
from tests.server.hostile import arrow_stream as written
from tests.server.hostile import batch_header, framed, history_table, patched

MiB = 1 << 20


def read(data: bytes, max_rows: int = 4096, budget: int = MiB, check=lambda schema: None):
    return arrow_stream.read_stream(data, "entry", max_rows, Budget(budget, budget), check)


def same_as_pyarrow(data: bytes) -> None:
    schema, batches = read(data)
    want = pa.ipc.open_stream(data)
    assert schema.equals(want.schema)
    got = pa.Table.from_batches(batches, schema=schema)
    assert got.equals(want.read_all())


def extra_columns(rows: int):
    """Columns a caller may send besides the four read: fixed-width, with nulls and lists."""
    rng = np.random.default_rng(rows)
    return {
        "continuousActionValuesSeq": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.random(rows * 8, np.float32)), 8),
        "impressedTimeMs": pa.array(rng.integers(0, 2**40, rows), mask=rng.random(rows) < 0.3),
        "timezoneId": pa.array(rng.integers(0, 500, rows).astype(np.int32)),
        "seen": pa.array(rng.random(rows) < 0.5, pa.bool_()),
        "at": pa.array(rng.integers(0, 2**40, rows), pa.timestamp("ms")),
        "semanticId": pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(
            pa.array(rng.integers(0, 9, rows * 6).astype(np.int16)), 3), 2),
    }  # fmt: skip


def table(rows: int, extra: bool = False):
    out = history_table(rows)
    for name, column in (extra_columns(rows) if extra else {}).items():
        out = out.append_column(name, column)
    return out


@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
@pytest.mark.parametrize("rows", [0, 1, 7, 1000])
@pytest.mark.parametrize("extra", [False, True])
def test_what_pyarrow_writes_reads_as_pyarrow_reads_it(compression, rows, extra):
    same_as_pyarrow(written(table(rows, extra), compression))


def test_several_batches_slices_nulls_and_the_legacy_format_read_too():
    t = table(100, extra=True)
    for data in (
        written(t, "zstd"),
        written(t.slice(3, 50), "lz4"),  # arrays with offsets
        written(pa.concat_tables([t, t.slice(10, 20)])),  # several batches
        written(pa.table({"tweetId": pa.array([1, None, 3]), "authorId": [4, 5, None]}), "zstd"),
    ):
        same_as_pyarrow(data)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(use_legacy_format=True)
    with pa.ipc.new_stream(sink, t.schema, options=options) as writer:
        writer.write_table(t, max_chunksize=30)
    same_as_pyarrow(sink.getvalue().to_pybytes())
    schema_only = written(history_table(0))
    assert read(schema_only)[1] == [] or all(b.num_rows == 0 for b in read(schema_only)[1])


def test_compressed_buffers_draw_their_sizes_from_the_budget():
    data = written(table(1000), "zstd")
    budget = Budget(MiB, MiB)
    arrow_stream.read_stream(data, "entry", 4096, budget, lambda s: None)
    # tweetId, authorId: 8,000 each; productSurface 4,000; 64,000 bits of multi-hot
    assert MiB - budget.left == 8000 + 8000 + 4000 + 8000
    with pytest.raises(InvalidArgument, match="^entry: inflates to 28000 bytes, over the 27999"):
        read(data, budget=27999)


def stream_with_buffer(data: bytes, index: int, offset: int, size: int) -> bytes:
    return patched(data, (hostile.buffer_place(data, index), I64, offset),
                   (hostile.buffer_place(data, index) + 8, I64, size))  # fmt: skip


def test_every_header_is_checked_against_the_schema_and_the_body():
    plain = written(table(4))
    batch = framed(plain)[1]
    nodes = batch.metadata + batch_header(plain, batch).count(1, PAIR)[0]
    for message, data in (
        ("a field node of 5 values", patched(plain, (nodes, I64, 5))),
        ("a field node of 4 values \\(5 null\\)", patched(plain, (nodes + 8, I64, 5))),
        ("a buffer of 0 bytes, 1 needed", patched(plain, (nodes + 8, I64, 1))),  # no bitmap
        ("a buffer of 8 bytes, 32 needed", stream_with_buffer(plain, 1, 0, 8)),
        ("outside the body", stream_with_buffer(plain, 1, 0, 1 << 40)),
        ("outside the body", stream_with_buffer(plain, 1, -8, 32)),
    ):
        with pytest.raises(InvalidArgument, match=message):
            read(data)


def test_compressed_length_prefixes_are_checked_and_minus_one_is_stored_uncompressed():
    packed = written(table(4), "zstd")
    batch = framed(packed)[1]
    at = batch.body + struct.unpack_from("<q", packed, hostile.buffer_place(packed, 1))[0]
    for value, message in ((31, "declaring 31 bytes, 32 expected"),
                           (97, "declaring 97 bytes, 32 expected"), (1 << 62, "declaring")):  # fmt: skip
        with pytest.raises(InvalidArgument, match=message):
            read(patched(packed, (at, I64, value)))
    # tweetId's values stored as -1 and the raw bytes; authorId's with its padding compressed.
    raw = np.arange(1, 5, dtype=np.int64).tobytes()
    base = written(pa.table({"tweetId": [1], "authorId": [1]}), "zstd")
    padded = hostile.prefixed(64, hostile.zstd_zeros(64, 64))
    data = hostile.rebatched(base, 4, [4, 4], [b"", struct.pack("<q", -1) + raw, b"", padded])
    schema, (got,) = read(data)
    assert got.column(0).to_pylist() == [1, 2, 3, 4] and got.column(1).to_pylist() == [0] * 4


def test_codecs_and_message_kinds_other_than_those_read_are_refused():
    packed = written(table(4), "zstd")
    batch = framed(packed)[1]
    compression = batch_header(packed, batch).table(3)
    for message, edit in (("compression codec 2", (batch.metadata + compression.position(0),
                                                   struct.Struct("<b"), 2)),):  # fmt: skip
        with pytest.raises(InvalidArgument, match=message):
            read(patched(packed, edit))
    plain = written(table(4))
    schema = framed(plain)[0]
    with pytest.raises(InvalidArgument, match="the first message is a record batch"):
        read(plain[framed(plain)[1].start :])
    with pytest.raises(InvalidArgument, match="after the schema only record batches"):
        read(plain[: framed(plain)[1].start] + plain[schema.start : schema.end])
    with pytest.raises(InvalidArgument, match="no schema message"):
        read(b"")


def test_the_schema_is_read_once_for_the_bytes_it_comes_in(monkeypatch):
    data = written(table(3, extra=True))
    read(data, check=xai.check_history_columns)
    calls = []
    monkeypatch.setattr(arrow_stream, "layout", lambda s: calls.append(s))
    read(data, check=xai.check_history_columns)
    assert not calls


def test_the_flatbuffer_reader_refuses_offsets_outside_the_metadata():
    for buf in (
        b"",
        b"\x04\x00",
        b"\xff\xff\xff\x7f" + bytes(8),
        b"\x04\x00\x00\x00\x00\x00\x00\x80",
    ):
        with pytest.raises(StreamError):
            table_ = Table.root(memoryview(buf))
            table_.scalar(3, I64)
    # A root table (at 12, its vtable at 4) whose field 1 points 0x7fff bytes on: past the end.
    buf = struct.pack("<I4HiI", 12, 8, 8, 0, 4, 8, 0x7FFF)
    table_ = Table.root(memoryview(buf))
    assert table_.position(0) is None and table_.position(1) == 16
    with pytest.raises(StreamError, match="outside its 20 bytes"):
        table_.vector(1, PAIR)
    with pytest.raises(StreamError, match="outside"):
        Table.root(memoryview(struct.pack("<I4Hi", 12, 8, 8, 0, 4, -100)))  # vtable past the end


def test_history_columns_beyond_the_four_read_are_accepted_if_fixed_width(parity_config):
    raw = xai_forms.expressible(random_request(np.random.default_rng(2), 20, 3), False)
    request = xai_forms.request([raw], "columnar_sequences")
    plain = pa.ipc.open_stream(request.columnar_sequences[0]).read_all()
    for name, column in extra_columns(plain.num_rows).items():
        plain = plain.append_column(name, column)
    request.columnar_sequences[0] = written(plain, "zstd")
    (got,) = xai.decode_request(request.SerializeToString(), parity_config, Limits())[1]
    np.testing.assert_array_equal(got.history_post_ids, raw.history_post_ids)
    np.testing.assert_array_equal(got.history_actions, raw.history_actions)


# -- fuzz ----------------------------------------------------------------------------------

SAMPLES = [written(table(5, extra=True), c) for c in (None, "zstd", "lz4")]
SAMPLES.append(written(pa.concat_tables([table(3), table(2)])))
HOSTILE_VALUES = [0, 1, -1, -2, 7, 8, 64, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]


@st.composite
def mutated_streams(draw) -> bytes:
    """A valid stream (plain or compressed) with bytes changed, int64s written at 8-aligned
    places (where a header's lengths and offsets, and the length prefixes, lie), or cut."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["byte", "int64", "int64", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "int64":
            at -= at % 8
            if at + 8 <= len(data):
                struct.pack_into("<q", data, at, draw(st.sampled_from(HOSTILE_VALUES)))
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=st.one_of(mutated_streams(), st.binary(max_size=400)))
def test_read_stream_answers_any_bytes_or_refuses(data):
    try:
        schema, batches = read(data, budget=64 * 1024)
    except InvalidArgument as e:
        assert e.field.startswith("entry")
        return
    for batch in batches:
        batch.validate(full=True)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=mutated_streams())
def test_a_history_from_any_stream_is_decoded_or_refused(data):
    bounds = xai.Bounds(Limits(), 16, Budget(64 * 1024, 64 * 1024))
    try:
        history = xai.history_from_arrow(data, "columnar_sequences[0]", bounds)
    except InvalidArgument as e:
        assert e.field.startswith("columnar_sequences[0]")
        return
    assert len(history["history_post_ids"]) == len(history["history_actions"]) <= 5
