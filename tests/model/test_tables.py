"""Table storage: int8 rows, streamed init/quantize, checksums, and typed errors for bad tables."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model import (
    ChecksumMismatchError,
    MissingParameterError,
    ParameterShapeError,
    TruncatedCheckpointError,
    load_checkpoint,
)
from model.checkpoint import content_sha256, default_checkpoint_path, verify_file
from model.checkpoint_writer import StreamingWriter
from model.exchange import export_exchange
from model.generate import init_checkpoint, preset, quantize_checkpoint
from model.params import flatten
from model.tables import bytes_per_row, dequantize, dequantized, quantize_int8
from tests.conftest import ROOT


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 33)),
              elements=st.floats(-1e4, 1e4, width=32)))  # fmt: skip
def test_int8_rows_round_trip_within_half_a_step(rows):
    values, scale = quantize_int8(rows)
    back = dequantize(values, scale)
    assert values.dtype == np.int8 and scale.shape == (rows.shape[0],)
    # Every entry within half a quantization step of its row (plus float32 rounding; rows
    # below float32's normal range may quantize to zero).
    tiny = np.finfo(np.float32).tiny
    bound = scale[:, None] / 2 + 1e-6 * np.abs(rows).max(axis=1, keepdims=True) + tiny
    assert np.all(np.abs(back - rows) <= bound)
    # The largest magnitude of each row is kept to float32 rounding.
    big = np.abs(rows).max(axis=1)
    assert np.allclose(np.abs(back).max(axis=1), big, rtol=1e-6, atol=tiny)


def test_bytes_per_row():
    assert [bytes_per_row(d, 512) for d in ("float32", "bfloat16", "int8")] == [2048, 1024, 516]


@pytest.fixture(scope="module")
def default_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "int8.safetensors"
    quantize_checkpoint(default_checkpoint_path(), out, "int8")
    return out


def test_quantize_keeps_dense_weights_and_shrinks_tables(default_int8):
    f32, i8 = load_checkpoint(default_checkpoint_path()), load_checkpoint(default_int8)
    assert i8.table_dtype == "int8" and f32.table_dtype == "float32"
    width = f32.config.emb_size
    assert i8.table_bytes == sum(f32.rows) * (width + 4)  # int8 values and one float scale
    assert i8.table_bytes / f32.table_bytes == pytest.approx((width + 4) / (4 * width))
    a, b = flatten(f32.state.params), flatten(i8.state.params)
    for name, value in a.items():
        if not name.startswith("hash_embeddings/"):
            assert np.array_equal(value, b[name]), name
    # The tables come back within half a step per row.
    for table, values in f32.tables.items():
        back = dequantize(i8.tables[table], i8.tables[table + "_scale"])
        step = i8.tables[table + "_scale"][:, None]
        assert np.all(np.abs(back - values) <= step / 2 + 1e-6), table


def test_streamed_checksums_match_the_loaded_tensors(default_int8):
    ckpt = load_checkpoint(default_int8)
    assert content_sha256(flatten(ckpt.state.params)) == ckpt.info.content_sha256
    assert verify_file(default_int8) == ckpt.info.file_sha256


def test_quantize_back_and_export_give_the_dequantized_values(tmp_path, default_int8):
    back = tmp_path / "f32.safetensors"
    quantize_checkpoint(default_int8, back, "float32")
    i8, f32 = load_checkpoint(default_int8), load_checkpoint(back)
    want = dequantized(i8.state.params)["hash_embeddings"]
    for table in ("user", "post", "author"):
        assert np.array_equal(f32.tables[table], want[table])
    export_exchange(default_int8, tmp_path / "x.npz", tmp_path / "x.json")
    with np.load(tmp_path / "x.npz") as npz:
        assert npz["hash_embeddings/post"].dtype == np.float32
        assert np.array_equal(npz["hash_embeddings/post"], want["post"])
        assert "hash_embeddings/post_scale" not in npz.files


def test_init_is_deterministic_and_blockwise(tmp_path, monkeypatch):
    import model.generate

    config, rows = preset("default")
    rows = rows._replace(post=5000)
    a = init_checkpoint(tmp_path / "a.safetensors", config, rows, "bfloat16", seed=3)
    monkeypatch.setattr(model.generate, "BLOCK_BYTES", 4096)  # many more, smaller blocks
    b = init_checkpoint(tmp_path / "b.safetensors", config, rows, "bfloat16", seed=3)
    c = init_checkpoint(tmp_path / "c.safetensors", config, rows, "bfloat16", seed=4)
    assert a.content_sha256 == b.content_sha256  # the block size does not change the file
    assert a.content_sha256 != c.content_sha256
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    tables = ckpt.tables
    assert tables["post"].shape == (5000, config.emb_size)
    assert tables["post"].dtype.name == "bfloat16"
    assert a.content_sha256 == content_sha256(flatten(ckpt.state.params))
    assert np.abs(tables["post"].astype(np.float32)).max() <= 2.0
    assert not np.array_equal(tables["user"][1], tables["user"][2])


def _peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory of `phoenix-ranker ARGS` in a process of its own, in MB."""
    code = ("import resource, sys; from phoenix_ranker.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return int(out.split("PEAK")[-1]) / 1024


def test_init_and_quantize_write_files_larger_than_their_memory(tmp_path):
    # 3,000,000 post rows x 64 x 4 bytes: a 770 MB table, written in 32 MB blocks.
    small, big, big8 = (tmp_path / n for n in ("small", "big", "big8"))
    base = _peak_rss_mb(["init", "--out", str(small), "--post-rows", "1000"])
    peak = _peak_rss_mb(["init", "--out", str(big), "--post-rows", "3000000"])
    size = big.stat().st_size
    assert size > 768e6
    assert peak - base < 200, (base, peak, size)  # a few blocks, not the file
    quant = _peak_rss_mb(["quantize", str(big), str(big8), "--table-dtype", "int8"])
    assert quant - base < 200, (base, quant)
    assert big8.stat().st_size < size / 3
    assert load_checkpoint(big8, verify_tables=False).table_dtype == "int8"
    assert verify_file(big8) == load_checkpoint(big8).info.file_sha256


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), 8 + n, data


def _rewrite(path, out, edit):
    """`path` with its header edited by `edit(header)`, the data as it was."""
    header, start, data = _header(path)
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    out.write_bytes(struct.pack("<Q", len(text)) + text + data[start:])
    return out


def test_int8_table_without_its_scales_is_refused(tmp_path, default_int8):
    def drop(header):
        header.pop("hash_embeddings/post_scale")
        digests = json.loads(header["__metadata__"]["tensor_sha256"])
        digests.pop("hash_embeddings/post_scale")
        header["__metadata__"]["tensor_sha256"] = json.dumps(digests)

    bad = _rewrite(default_int8, tmp_path / "noscale.safetensors", drop)
    with pytest.raises(MissingParameterError, match="hash_embeddings/post_scale"):
        load_checkpoint(bad)


def test_scales_of_the_wrong_shape_are_refused(tmp_path, default_int8):
    def reshape(header):
        entry = header["hash_embeddings/author_scale"]
        entry["shape"] = [entry["shape"][0], 1]  # the same bytes, [N, 1] instead of [N]

    bad = _rewrite(default_int8, tmp_path / "shape.safetensors", reshape)
    with pytest.raises(ParameterShapeError, match="hash_embeddings/author_scale"):
        load_checkpoint(bad)


def test_truncated_int8_file_is_refused_naming_the_cut_tensor(tmp_path, default_int8):
    header, start, data = _header(default_int8)
    begin, end = header["hash_embeddings/post"]["data_offsets"]
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: start + (begin + end) // 2])  # the file ends inside the post table
    with pytest.raises(TruncatedCheckpointError, match="'hash_embeddings/post'"):
        load_checkpoint(bad, verify_tables=False)


def test_a_corrupt_table_is_found_when_the_tables_are_verified(tmp_path, default_int8):
    header, start, data = _header(default_int8)
    begin, _ = header["hash_embeddings/user"]["data_offsets"]
    data = bytearray(data)
    data[start + begin + 100] ^= 0xFF
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    ckpt = load_checkpoint(bad, verify_tables=False)  # the tables are not read
    assert ckpt.info.file_sha256 == ""
    with pytest.raises(ChecksumMismatchError, match="hash_embeddings/user"):
        verify_file(bad)
    with pytest.raises(ChecksumMismatchError, match="hash_embeddings/user"):
        load_checkpoint(bad)


def test_the_writer_refuses_out_of_order_or_incomplete_tensors(tmp_path):
    config, _ = preset("default")
    specs = {"a/x": (np.float32, (4, 2)), "b/y": (np.float32, (3,))}
    target = tmp_path / "w.safetensors"
    with pytest.raises(ValueError, match="name order"):
        with StreamingWriter(target, specs, config, "v") as w:
            w.write("b/y", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="not written whole"):
        with StreamingWriter(target, specs, config, "v") as w:
            w.write("a/x", np.zeros((2, 2), np.float32))
            w.close()
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing left behind
