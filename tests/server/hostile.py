"""Hostile requests: bytes built to make a decoder inflate, allocate or loop, each with the
status codes a server may answer. `cases(limits)` is the corpus, for a real server (every case
answered with one of its codes, the process unharmed) and for the decoders directly
(tests/server/test_inflate.py: each InvalidArgument, within time and memory bounds).

The zstd bombs are written by hand, not compressed: a frame of RLE blocks, 4 bytes for each
128 KiB of zeros, so 2 GiB cost 64 KiB and building them costs nothing. The Arrow ones are
pyarrow streams whose record batch header and body are rewritten (`rebatched`). Every case is
at most `limits.max_request_bytes` bytes, but those about the size limit.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
from typing import NamedTuple

import numpy as np

from server.config import Limits
from server.contracts.arrow_stream import I64, PAIR, U32, Table
from server.rpc import recsys_pb2 as xpb
from tests.helpers import random_request, varint
from tests.server import xai_forms

PREDICT, RANK = "PredictNextActions", "Rank"
REFUSED = ("INVALID_ARGUMENT",)
GiB = 1 << 30


class Case(NamedTuple):
    name: str
    method: str  # PREDICT or RANK
    data: bytes  # the request's bytes
    codes: tuple[str, ...]  # grpc.StatusCode names the server may answer (OK: a valid request)


# -- zstd ----------------------------------------------------------------------------------

BLOCK = 1 << 17  # zstd's largest block: 128 KiB


def zstd_zeros(size: int, declared: int | None = None, window_log: int = 17,
               blocks: int | None = None) -> bytes:  # fmt: skip
    """A zstd frame of `size` zeros in RLE blocks, declaring `declared` bytes of content
    (None: no content size) and a window of 2**window_log; `blocks` writes only that many
    (a frame cut short, or one whose declared size lies)."""
    descriptor = 3 << 6 if declared is not None else 0  # an 8-byte content size, or none
    header = struct.pack("<IBB", 0xFD2FB528, descriptor, (window_log - 10) << 3)
    if declared is not None:
        header += struct.pack("<Q", declared)
    count = max(1, -(-size // BLOCK))
    last = size - (count - 1) * BLOCK

    def block(n: int, final: bool) -> bytes:  # Block_Type 1 (RLE), Block_Size n, one byte
        return struct.pack("<I", n << 3 | 1 << 1 | final)[:3] + b"\0"

    if blocks is not None:
        return header + block(BLOCK, False) * blocks
    return header + block(BLOCK, False) * (count - 1) + block(last, True)


def skippable(size: int, content: bytes = b"") -> bytes:
    """A zstd skippable frame declaring `size` bytes of content (holding `content`)."""
    return struct.pack("<II", 0x184D2A50, size) + content


def zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


# -- requests ------------------------------------------------------------------------------


def _raw(seed: int = 1, history: int = 8, candidates: int = 4):
    raw = random_request(np.random.default_rng(seed), history, candidates, f"hostile-{seed}")
    return xai_forms.expressible(raw, one_action=False)


def compressed_request(data: bytes, sets: int = 1) -> bytes:
    """A valid request whose one sequence's compressedUserActions holds `data`, paired with
    `sets` candidate sets (all the sequence's user's)."""
    raw = _raw(candidates=1)
    request = xai_forms.request([raw], "orderedAggregatedUserActionsList")
    compressed = request.sequences[0].userActionsData.compressedUserActions
    compressed.CopyFrom(xpb.CompressedUserActionSequence(data=data, compression_type=xpb.ZSTD))
    for _ in range(sets - 1):
        request.candidateSets.append(request.candidateSets[0])
    return request.SerializeToString()


def columnar_request(*streams: bytes) -> bytes:
    """A valid request with one candidate set per stream, each taking it as its history."""
    raws = [_raw(seed, candidates=1) for seed in range(len(streams))]
    request = xai_forms.request(raws, "orderedAggregatedUserActionsList")
    request.ClearField("sequences")
    request.columnar_sequences.extend(streams)
    return request.SerializeToString()


def at_size(build, size: int) -> bytes:
    """`build(n)` for the largest n whose bytes are at most `size` (build grows with n)."""
    low, high = 0, 1
    while len(build(high)) <= size:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if len(build(mid)) <= size else (low, mid)
    return build(low)


def sequence_bytes(events: int, padding: int = 0, actions: int | None = None) -> bytes:
    """A UserActionSequence of `events` aggregated events (`actions` action entries at most)
    and `padding` zero bytes in an unknown field (a history as large as wanted, that
    compresses to little)."""
    raw = _raw(7, history=events)
    if actions is not None:  # each event keeps its first few actions (one entry at least)
        per_event = max(1, actions // max(events, 1))
        kept = raw.history_actions * (np.cumsum(raw.history_actions, axis=1) <= per_event)
        raw = dataclasses.replace(raw, history_actions=kept.astype(np.uint8))
    seq = xai_forms.sequence(raw, "orderedAggregatedUserActionsList")
    data = seq.SerializeToString()
    return data + (varint(99 << 3 | 2) + varint(padding) + bytes(padding) if padding else b"")


def nested_sequence(data: bytes) -> bytes:
    """A UserActionSequence whose history is compressed `data` (the form may not nest)."""
    seq = xpb.UserActionSequence(userId=1)
    seq.userActionsData.compressedUserActions.data = data
    seq.userActionsData.compressedUserActions.compression_type = xpb.ZSTD
    return seq.SerializeToString()


# -- Arrow ---------------------------------------------------------------------------------


def arrow_stream(table, compression: str | None = None, batch: bool = False) -> bytes:
    """`table` as a stream (`batch`: as one record batch, even when it has no rows)."""
    import pyarrow as pa
    import pyarrow.ipc

    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        if batch:
            writer.write_batch(table.combine_chunks().to_batches()[0] if table.num_rows else
                               pa.record_batch([c.combine_chunks() for c in table.columns],
                                               schema=table.schema))  # fmt: skip
        else:
            writer.write_table(table)
    return sink.getvalue()


def history_table(rows: int, width: int = xai_forms.WIDTH):
    import pyarrow as pa

    ids = np.arange(1, rows + 1, dtype=np.int64)
    return pa.table({
        "tweetId": ids, "authorId": ids, "productSurface": np.zeros(rows, np.int32),
        "actionNameMultiHot": pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(rows * width, bool)), width),
    })  # fmt: skip


class Framed(NamedTuple):
    """One message of a stream: where its metadata and body lie."""

    start: int
    metadata: int
    body: int
    end: int


def framed(stream: bytes) -> list[Framed]:
    """The messages of a stream written by pyarrow (continuation markers, then EOS)."""
    out, at = [], 0
    while at + 8 <= len(stream):
        size = struct.unpack_from("<i", stream, at + 4)[0]
        if size == 0:
            break
        root = Table.root(memoryview(stream)[at + 8 : at + 8 + size])
        body = at + 8 + size
        out.append(Framed(at, at + 8, body, body + root.scalar(3, I64)))
        at = out[-1].end
    return out


def batch_header(stream: bytes, message: Framed) -> Table:
    return Table.root(memoryview(stream)[message.metadata : message.body]).table(2)


def patched(stream: bytes, *edits: tuple[int, struct.Struct, int]) -> bytes:
    """`stream` with each (position, kind, value) written in."""
    out = bytearray(stream)
    for at, kind, value in edits:
        kind.pack_into(out, at, value)
    return bytes(out)


def rebatched(stream: bytes, rows: int, node_lengths: list[int], buffers: list[bytes]) -> bytes:
    """A stream of pyarrow's (its schema, one record batch) with that batch's row count, field
    node lengths (null counts 0) and buffers (8-aligned, in the body) replaced."""
    schema, batch = framed(stream)[:2]
    header = batch_header(stream, batch)
    base = batch.metadata
    nodes, count = header.count(1, PAIR)
    places, slots = header.count(2, PAIR)
    assert count == len(node_lengths) and slots == len(buffers), (count, slots)
    edits = [(base + header.position(0), I64, rows)]
    edits += [(base + nodes + 16 * i + k * 8, I64, v)
              for i, n in enumerate(node_lengths) for k, v in enumerate((n, 0))]  # fmt: skip
    body, offset = b"", 0
    for i, data in enumerate(buffers):
        edits += [
            (base + places + 16 * i, I64, offset),
            (base + places + 16 * i + 8, I64, len(data)),
        ]
        padded = data + bytes(-len(data) % 8)
        body, offset = body + padded, offset + len(padded)
    root = Table.root(memoryview(stream)[batch.metadata : batch.body])
    edits.append((batch.metadata + root.position(3), I64, len(body)))
    metadata = patched(stream, *edits)[batch.start : batch.body]
    return stream[: batch.start] + metadata + body + struct.pack("<Ii", 0xFFFFFFFF, 0)


def prefixed(size: int, frame: bytes) -> bytes:
    """A compressed Arrow buffer: its int64 uncompressed length, then the frame."""
    return struct.pack("<q", size) + frame


def buffer_place(stream: bytes, index: int) -> int:
    """Where the first record batch's buffer `index` (offset, length) is written."""
    batch = framed(stream)[1]
    places, _ = batch_header(stream, batch).count(2, PAIR)
    return batch.metadata + places + 16 * index


def arrow_cases(limits: Limits) -> list[Case]:
    import pyarrow as pa

    plain = arrow_stream(history_table(4))
    packed = arrow_stream(history_table(4), "zstd")
    batch = framed(plain)[1]
    header = batch_header(plain, batch)
    length = batch.metadata + header.position(0)
    nodes, _ = header.count(1, PAIR)
    body_length = batch.metadata + Table.root(
        memoryview(plain)[batch.metadata : batch.body]).position(3)  # fmt: skip

    # 1e8 rows of two int64 columns, each a zstd frame of 800 MB of zeros (~49 KB in all).
    ids = arrow_stream(pa.table({"tweetId": [1], "authorId": [1]}), "zstd")
    n = 10**8
    column = prefixed(8 * n, zstd_zeros(8 * n, 8 * n))
    rows_bomb = rebatched(ids, n, [n, n], [b"", column, b"", column])
    # 4,000 rows of a 262,144-wide actionNameMultiHot (131 MB of bits in ~5 KB).
    wide = 1 << 18
    base = arrow_stream(history_table(1, wide).drop_columns(["productSurface"]), "zstd")
    rows, bits = 4000, 4000 * wide // 8
    wide_bomb = rebatched(base, rows, [rows, rows, rows, rows * wide], [
        b"", prefixed(8 * rows, zstd_zeros(8 * rows, 8 * rows)),
        b"", prefixed(8 * rows, zstd_zeros(8 * rows, 8 * rows)),
        b"", b"", prefixed(bits, zstd_zeros(bits, bits)),
    ])  # fmt: skip
    # Many record batches: the schema, then as many empty batches as fit.
    empty = arrow_stream(history_table(0), batch=True)
    schema_end, one = framed(empty)[0].end, framed(empty)[1]
    piece = empty[one.start : one.end]
    batches = (limits.max_request_bytes // 2) // len(piece)
    many = empty[:schema_end] + piece * batches + struct.pack("<Ii", 0xFFFFFFFF, 0)
    # A dictionary batch after a plain schema (spliced from a stream of a dictionary column).
    coded = arrow_stream(pa.table({"tweetId": pa.array([1, 2]).dictionary_encode(),
                                   "authorId": [1, 2]}))  # fmt: skip
    dictionary = framed(coded)[1]
    spliced = (plain[: framed(plain)[0].end] + coded[dictionary.start : dictionary.end]
               + plain[batch.start :])  # fmt: skip
    columns = min(5000, limits.max_request_bytes // 160)
    wide_schema = arrow_stream(pa.table({f"c{i}": pa.array([1], pa.int8()) for i in range(columns)}
                                        | {"tweetId": [1], "authorId": [1]}))  # fmt: skip
    nested = pa.array([1], pa.int8())
    for _ in range(32):
        nested = pa.FixedSizeListArray.from_arrays(nested, 1)
    deep = arrow_stream(pa.table({"tweetId": [1], "authorId": [1], "x": nested}))
    strings = arrow_stream(pa.table({"tweetId": [1], "authorId": [1], "note": ["x" * 1000]}))
    packed_batch = framed(packed)[1]
    prefix_at = packed_batch.body + struct.unpack_from(
        "<q", packed, buffer_place(packed, 1))[0]  # fmt: skip
    # Two entries each inflating to 0.6 x the limit: either alone fits the call's budget.
    rows = min(limits.max_history_events, 1000)
    width = max(1, int((0.6 * limits.max_request_bytes - 16 * rows) / (8 * rows)))
    padded = arrow_stream(pa.table({
        "tweetId": [1], "authorId": [1],
        "pad": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(width, np.int64)), width),
    }), "zstd")  # fmt: skip
    ids_column = prefixed(8 * rows, zstd_zeros(8 * rows, 8 * rows))
    pad = prefixed(8 * rows * width, zstd_zeros(8 * rows * width, 8 * rows * width))
    halves = [rebatched(padded, rows, [rows, rows, rows, rows * width],
                        [b"", ids_column, b"", ids_column, b"", b"", pad])] * 2  # fmt: skip

    def case(name: str, *streams: bytes) -> Case:
        return Case(name, PREDICT, columnar_request(*streams), REFUSED)

    return [
        case("arrow_rows_1e8_zstd_bomb", rows_bomb),
        case("arrow_multi_hot_262144_wide_zstd_bomb", wide_bomb),
        case(
            "arrow_rows_2^62",
            patched(
                plain,
                (length, I64, 1 << 62),
                *[(batch.metadata + nodes + 16 * i, I64, 1 << 62) for i in range(5)],
            ),
        ),  # fmt: skip
        case(
            "arrow_rows_over_max_history_events",
            arrow_stream(history_table(limits.max_history_events + 1)),
        ),
        case(
            "arrow_buffer_length_2^62", patched(plain, (buffer_place(plain, 1) + 8, I64, 1 << 62))
        ),
        case("arrow_buffer_offset_-8", patched(plain, (buffer_place(plain, 1), I64, -8))),
        case(
            "arrow_field_node_length_2^40", patched(plain, (batch.metadata + nodes, I64, 1 << 40))
        ),
        case("arrow_body_length_2^40", patched(plain, (body_length, I64, 1 << 40))),
        case("arrow_metadata_length_2^31-1", patched(plain, (batch.start + 4, U32, 2**31 - 1))),
        case("arrow_compressed_prefix_2^62", patched(packed, (prefix_at, I64, 1 << 62))),
        case("arrow_compressed_prefix_-2", patched(packed, (prefix_at, I64, -2))),
        case("arrow_many_record_batches", many),
        case("arrow_dictionary_batch", spliced),
        case("arrow_many_columns", wide_schema),
        case("arrow_nested_fixed_size_lists_32_deep", deep),
        case("arrow_string_column", strings),
        case("arrow_two_entries_together_over_the_budget", *halves),
        case("arrow_garbage", b"\xff\xff\xff\xff\x10\x00\x00\x00" + bytes(range(256)) * 4),
    ]


# -- protobuf ------------------------------------------------------------------------------


def protobuf_cases(limits: Limits) -> list[Case]:
    size = limits.max_request_bytes
    nested_groups = b"\x9b\x06" * (size // 2)  # field 99, start group, never ended
    empty_sets = b"\x12\x00" * (size // 2)  # as many empty candidate sets as fit
    empty_candidates = b"\x1a\x00" * (size // 2)  # as many empty Rank candidates as fit
    return [
        Case("protobuf_nested_groups", PREDICT, nested_groups, REFUSED),
        Case("protobuf_nested_groups_rank", RANK, nested_groups, REFUSED),
        Case("protobuf_empty_candidate_sets", PREDICT, empty_sets, REFUSED),
        Case("protobuf_empty_candidates_rank", RANK, empty_candidates, REFUSED),
        Case("protobuf_length_past_the_end", PREDICT, b"\x0a\xff\xff\xff\x7f" + bytes(64), REFUSED),
        Case("protobuf_varint_of_11_bytes", PREDICT, b"\x08" + b"\xff" * 10 + b"\x01", REFUSED),
        Case("request_one_byte_over_the_limit", PREDICT, bytes(size + 1), REFUSED),
        # gRPC's own limit is twice the service's (server.door.transport): refused before decoding.
        Case("request_over_the_transport_limit", PREDICT, bytes(2 * size + 1),
             ("RESOURCE_EXHAUSTED",)),
    ]  # fmt: skip


# -- the corpus ----------------------------------------------------------------------------


def cases(limits: Limits | None = None) -> tuple[Case, ...]:
    """The hostile corpus for a server with `limits` (default: the defaults)."""
    return _cases(limits or Limits())


@functools.cache
def _cases(limits: Limits) -> tuple[Case, ...]:
    size = limits.max_request_bytes
    zstd = [
        ("zstd_2GiB_declared", zstd_zeros(2 * GiB, 2 * GiB)),
        ("zstd_8GiB_declared", zstd_zeros(8 * GiB, 8 * GiB)),
        ("zstd_2GiB_undeclared", zstd_zeros(2 * GiB)),
        ("zstd_8GiB_undeclared", zstd_zeros(8 * GiB)),
        ("zstd_declared_2^40", zstd_zeros(BLOCK * 4, 1 << 40, blocks=4)),
        ("zstd_declared_2^63", zstd_zeros(BLOCK * 4, 1 << 63, blocks=4)),
        ("zstd_declared_2^64-2", zstd_zeros(BLOCK, 2**64 - 2, blocks=1)),
        ("zstd_declared_small_holding_2GiB", zstd_zeros(2 * GiB, 1000)),
        ("zstd_window_2GiB", zstd_zeros(1000, window_log=31)),
        ("zstd_cut_short", zstd_compress(sequence_bytes(64))[:-5]),
        ("zstd_garbage", b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4),
        ("zstd_skippable_then_2GiB", skippable(4, b"abcd") + zstd_zeros(2 * GiB)),
        ("zstd_skippable_declaring_4GiB", skippable(2**32 - 1, b"abcd")),
        ("zstd_frames_each_under_the_budget", zstd_zeros(size // 2, size // 2) * 4),
        ("zstd_nested", zstd_compress(nested_sequence(zstd_zeros(2 * GiB, 2 * GiB)))),
    ]  # fmt: skip
    out = [Case(name, PREDICT, compressed_request(data), REFUSED) for name, data in zstd]
    shared = compressed_request(zstd_compress(sequence_bytes(64, 8 << 20)), 64)
    out.append(Case("zstd_8MiB_history_shared_by_64_sets", PREDICT, shared, REFUSED))
    for declared in (True, False):  # a bomb as large as a request may be

        def build(blocks: int, declared: bool = declared) -> bytes:
            frame = zstd_zeros(blocks * BLOCK, blocks * BLOCK if declared else None, blocks=blocks)
            return compressed_request(frame)

        name = f"zstd_bomb_at_the_request_limit_{'declared' if declared else 'undeclared'}"
        out.append(Case(name, PREDICT, at_size(build, size), REFUSED))
    # Valid, and built to cost: a maximal history (max_history_events events, compressed)
    # shared by max_candidate_sets sets, decoded once; and a history of skippable frames.
    inner = sequence_bytes(limits.max_history_events, actions=limits.max_history_actions)
    data = compressed_request(zstd_compress(inner), limits.max_candidate_sets)
    fits = ("OK",) if len(inner) <= size - len(data) else REFUSED
    out.append(Case("zstd_maximal_history_shared_by_every_set", PREDICT, data, fits))
    out.append(Case("zstd_many_skippable_frames", PREDICT,
                    compressed_request(skippable(0) * (size // 16)), REFUSED))  # fmt: skip
    out += arrow_cases(limits) + protobuf_cases(limits)
    return tuple(out)
