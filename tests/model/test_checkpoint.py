"""Checkpoints and the exchange format: bit-exact round trips and a clear error per problem."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from model import (
    ChecksumMismatchError,
    IncompatibleConfigError,
    MissingParameterError,
    NotACheckpointError,
    ParameterDtypeError,
    ParameterShapeError,
    PhoenixModelConfig,
    TrainingState,
    TruncatedCheckpointError,
    UnexpectedParameterError,
    export_exchange,
    import_exchange,
    load_checkpoint,
    read_exchange,
    save_checkpoint,
)
from model.checkpoint import FORMAT, FORMAT_VERSION, content_sha256, verify_file
from model.errors import UnreadableCheckpointError
from model.params import flatten
from tests.conftest import PARITY_DIR


@pytest.fixture(scope="module")
def exchange():
    with np.load(PARITY_DIR / "params.npz") as npz:
        flat = {k: npz[k] for k in npz.files}
    return flat, json.loads((PARITY_DIR / "config.json").read_text())


def write_raw(path, flat, config_json, **overrides):
    """A safetensors file with our metadata, bypassing save_checkpoint's validation."""
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config_json),
        "model_version": "test",
        "created_at": "2026-01-01T00:00:00+00:00",
        "content_sha256": content_sha256(flat),
        **overrides,
    }
    safetensors.numpy.save_file(flat, str(path), metadata=metadata)
    return path


def test_checkpoint_round_trip_is_bit_exact(tmp_path, exchange):
    flat, config_json = exchange
    config = PhoenixModelConfig.from_dict(config_json)
    tree = {}
    for name, value in flat.items():
        module, _, param = name.rpartition("/")
        tree.setdefault(module, {})[param] = value
    info = save_checkpoint(tmp_path / "a.safetensors", TrainingState(tree), config, "v1")
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    assert ckpt.config == config
    assert ckpt.info.model_version == "v1" and ckpt.info == info
    loaded = flatten(ckpt.state.params)
    assert sorted(loaded) == sorted(flat)
    for name, value in flat.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert loaded[name].tobytes() == value.tobytes(), name


def test_load_memory_maps_instead_of_copying(parity_checkpoint):
    ckpt = load_checkpoint(parity_checkpoint)
    table = ckpt.state.params["hash_embeddings"]["post"]
    assert not table.flags.owndata and not table.flags.writeable
    assert isinstance(table.base, memoryview) or table.base is not None


def test_reference_safetensors_library_reads_our_files(parity_checkpoint, exchange):
    flat, _ = exchange
    theirs = safetensors.numpy.load_file(str(parity_checkpoint))
    assert all(theirs[k].tobytes() == flat[k].tobytes() for k in flat)


def test_import_export_round_trip_is_bit_exact(tmp_path, parity_checkpoint, exchange):
    flat, config_json = exchange
    export_exchange(parity_checkpoint, tmp_path / "out.npz", tmp_path / "out.json")
    with np.load(tmp_path / "out.npz") as npz:
        assert sorted(npz.files) == sorted(flat)
        for name in flat:
            assert npz[name].dtype == flat[name].dtype
            assert npz[name].tobytes() == flat[name].tobytes(), name
    assert json.loads((tmp_path / "out.json").read_text()) == config_json
    # ...and the exported pair imports back to a checkpoint with the same tensors.
    again = import_exchange(
        tmp_path / "out.npz", tmp_path / "out.json", tmp_path / "again.safetensors"
    )
    assert again.content_sha256 == load_checkpoint(parity_checkpoint).info.content_sha256


# -- each corruption gets its own error -------------------------------------------------------


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(NotACheckpointError, match="not a safetensors file"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"{}", b'{"a": 1}\n'])
def test_tiny_or_json_files_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(NotACheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(NotACheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_plain_safetensors_without_our_metadata(tmp_path, exchange):
    flat, _ = exchange
    safetensors.numpy.save_file(flat, str(tmp_path / "plain.safetensors"))
    with pytest.raises(NotACheckpointError, match="phoenix-ranker import|import"):
        load_checkpoint(tmp_path / "plain.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.999, 9 / 4096])
def test_truncated_file(tmp_path, parity_checkpoint, keep):
    data = parity_checkpoint.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: max(9, int(len(data) * keep))])
    with pytest.raises(TruncatedCheckpointError, match="bytes"):
        load_checkpoint(path)


def test_flipped_byte_fails_the_checksum(tmp_path, parity_checkpoint):
    data = bytearray(parity_checkpoint.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 + header_len + 1000] ^= 0x01
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="corrupt"):
        load_checkpoint(path)


def test_missing_parameter(tmp_path, exchange):
    flat, config_json = exchange
    broken = {k: v for k, v in flat.items() if k != "phoenix_model/unembeddings"}
    with pytest.raises(MissingParameterError, match="phoenix_model/unembeddings"):
        load_checkpoint(write_raw(tmp_path / "m.safetensors", broken, config_json))


def test_missing_hash_table(tmp_path, exchange):
    flat, config_json = exchange
    broken = {k: v for k, v in flat.items() if k != "hash_embeddings/author"}
    with pytest.raises(MissingParameterError, match="hash_embeddings/author"):
        load_checkpoint(write_raw(tmp_path / "m.safetensors", broken, config_json))


def test_unexpected_parameter(tmp_path, exchange):
    flat, config_json = exchange
    broken = {**flat, "transformer/decoder_layer_9/linear/w": np.zeros((2, 2), np.float32)}
    with pytest.raises(UnexpectedParameterError, match="decoder_layer_9"):
        load_checkpoint(write_raw(tmp_path / "u.safetensors", broken, config_json))


def test_wrong_shape(tmp_path, exchange):
    flat, config_json = exchange
    name = "transformer/decoder_layer_1/multi_head_attention/key/w"
    broken = {**flat, name: np.ascontiguousarray(flat[name].T)}
    with pytest.raises(ParameterShapeError, match="key/w has shape"):
        load_checkpoint(write_raw(tmp_path / "s.safetensors", broken, config_json))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_wrong_dtype(tmp_path, exchange, dtype):
    flat, config_json = exchange
    name = "phoenix_model/rms_norm/scale"
    broken = {**flat, name: flat[name].astype(dtype)}
    with pytest.raises(ParameterDtypeError, match="rms_norm/scale"):
        load_checkpoint(write_raw(tmp_path / "d.safetensors", broken, config_json))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_actions": 20}, "num_actions"),
        ({"rope_positions": "learned"}, "rope_positions"),
        (
            {
                "hash_config": {
                    "num_user_hashes": 2,
                    "num_item_hashes": 2,
                    "num_author_hashes": 2,
                    "extra": 1,
                }
            },
            "extra",
        ),
        (
            {
                "model": {
                    "emb_size": 64,
                    "key_size": 16,
                    "num_q_heads": 3,
                    "num_kv_heads": 2,
                    "num_layers": 2,
                }
            },
            "multiple",
        ),
    ],
)
def test_incompatible_config(tmp_path, exchange, change, match):
    flat, config_json = exchange
    path = write_raw(tmp_path / "c.safetensors", flat, {**config_json, **change})
    with pytest.raises(IncompatibleConfigError, match=match):
        load_checkpoint(path)


def test_config_that_disagrees_with_the_tensors(tmp_path, exchange):
    flat, config_json = exchange
    path = write_raw(
        tmp_path / "c.safetensors",
        flat,
        {
            **config_json,
            "history_seq_len": 16,
            "emb_size": 32,
            "model": {**config_json["model"], "emb_size": 32},
        },
    )
    with pytest.raises(ParameterShapeError):
        load_checkpoint(path)


def test_unknown_format_version(tmp_path, exchange):
    flat, config_json = exchange
    path = write_raw(tmp_path / "v.safetensors", flat, config_json, format_version="99")
    with pytest.raises(IncompatibleConfigError, match="format version"):
        load_checkpoint(path)


def test_import_validates_like_load(tmp_path, exchange):
    flat, config_json = exchange
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in flat.items() if "proj_mat_2" not in k})
    with pytest.raises(MissingParameterError, match="proj_mat_2"):
        read_exchange(tmp_path / "missing.npz", tmp_path / "config.json")
    np.savez(tmp_path / "f64.npz", **{k: v.astype(np.float64) for k, v in flat.items()})
    with pytest.raises(ParameterDtypeError):
        read_exchange(tmp_path / "f64.npz", tmp_path / "config.json")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(NotACheckpointError, match="npz"):
        read_exchange(tmp_path / "bad.npz", tmp_path / "config.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(IncompatibleConfigError, match="JSON"):
        read_exchange(PARITY_DIR / "params.npz", tmp_path / "bad.json")


def test_save_refuses_params_that_do_not_match_the_config(tmp_path, exchange):
    flat, config_json = exchange
    config = PhoenixModelConfig.from_dict(config_json)
    tree = {
        "hash_embeddings": {k.split("/")[1]: v for k, v in flat.items() if k.startswith("hash_")}
    }
    with pytest.raises(MissingParameterError):
        save_checkpoint(tmp_path / "x.safetensors", tree, config, "v")
    assert not (tmp_path / "x.safetensors").exists()


# -- malformed files: a CheckpointError naming the file and the field, never another error ---


def split(path: Path) -> tuple[dict, bytes]:
    """A checkpoint file -> (its header, its data section)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def write_file(out: Path, header: dict | bytes, body: bytes) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return out


def set_field(field, value):
    def edit(header):
        header["hash_embeddings/post"][field] = value

    return edit


def set_metadata(field, value):
    def edit(header):
        header["__metadata__"][field] = value

    return edit


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def entry_edits():
    """(edit of a parity checkpoint's header, error, message), one per malformation."""
    post = "hash_embeddings/post"
    return [
        (set_field("dtype", ["F32"]), NotACheckpointError, r"post'?: dtype \['F32'\] is not a"),
        (set_field("dtype", "U64"), ParameterDtypeError, "post' is 'U64'"),
        (set_field("data_offsets", ["0", "4"]), NotACheckpointError, "data_offsets"),
        (set_field("data_offsets", [0]), NotACheckpointError, "data_offsets"),
        (set_field("data_offsets", [-4, 0]), NotACheckpointError, "data_offsets"),
        (set_field("data_offsets", [2**64, 2**64 + 8]), TruncatedCheckpointError, "ends at"),
        (set_field("shape", "64"), NotACheckpointError, "shape '64' is not a list"),
        (set_field("shape", [True, 64]), NotACheckpointError, "shape"),
        (set_field("shape", [-1, 64]), NotACheckpointError, "shape"),
        (set_field("shape", [1.0, 64]), NotACheckpointError, "shape"),
        (set_field("shape", [1] * 9), NotACheckpointError, "at most 8"),
        (set_field("shape", [2**62, 2**62]), NotACheckpointError, "does not hold shape"),
        (set_field("extra", 1), NotACheckpointError, "is not {dtype, shape, data_offsets}"),
        (lambda h: h.update({post: [1, 2]}), NotACheckpointError, "is not {dtype"),
        (lambda h: h[post]["data_offsets"].reverse(), NotACheckpointError, "end before"),
        (set_metadata("model_version", 3), NotACheckpointError, "__metadata__"),
        (lambda h: h.update({"__metadata__": ["x"]}), NotACheckpointError, "__metadata__"),
        (set_metadata("config", nested(100_000)), IncompatibleConfigError, "nests deeper"),
        (set_metadata("config", "{"), IncompatibleConfigError, "config is not JSON"),
        (set_metadata("tensor_sha256", nested(100_000)), NotACheckpointError, "nests deeper"),
        (set_metadata("tensor_sha256", "[]"), NotACheckpointError, "tensor_sha256"),
    ]


@pytest.mark.parametrize(("edit", "error", "match"), entry_edits())
def test_a_malformed_header_entry_is_a_checkpoint_error(tmp_path, parity_checkpoint, edit,
                                                        error, match):  # fmt: skip
    header, body = split(parity_checkpoint)
    edit(header)
    path = write_file(tmp_path / "bad.safetensors", header, body)
    with pytest.raises(error, match=match) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_digests_that_are_not_strings(tmp_path, parity_checkpoint):
    header, body = split(parity_checkpoint)
    digests = json.loads(header["__metadata__"]["tensor_sha256"])
    header["__metadata__"]["tensor_sha256"] = json.dumps(dict.fromkeys(digests, 1))
    with pytest.raises(NotACheckpointError, match="not a string"):
        load_checkpoint(write_file(tmp_path / "d.safetensors", header, body))


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("num_layers", 10**9, MissingParameterError, "1000000000 layers"),  # never traced
        ("emb_size", 2**70, ParameterShapeError, "shape"),
        ("key_size", 2**62, IncompatibleConfigError, "builds no model"),
    ],
)
def test_a_config_that_builds_no_model_is_refused(tmp_path, parity_checkpoint, field, value,
                                                  error, match):  # fmt: skip
    header, body = split(parity_checkpoint)
    config = json.loads(header["__metadata__"]["config"])
    config["model"][field] = value
    if field == "emb_size":
        config["emb_size"] = value
    header["__metadata__"]["config"] = json.dumps(config)
    started = time.monotonic()
    with pytest.raises(error, match=match):
        load_checkpoint(write_file(tmp_path / "c.safetensors", header, body))
    assert time.monotonic() - started < 10


def overlap(header: dict) -> None:
    """The second of two tensors of one byte length moved onto the first's bytes."""
    by_length = {}
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            by_length.setdefault(end - begin, []).append(name)
    first, second = next(names for names in by_length.values() if len(names) > 1)[:2]
    header[second]["data_offsets"] = list(header[first]["data_offsets"])


def test_tensors_that_overlap_or_leave_gaps_are_refused(tmp_path, parity_checkpoint):
    header, body = split(parity_checkpoint)
    overlap(header)
    with pytest.raises(NotACheckpointError, match="overlap|unused"):
        load_checkpoint(write_file(tmp_path / "o.safetensors", header, body))
    header, body = split(parity_checkpoint)
    with pytest.raises(NotACheckpointError, match="8 bytes after the last tensor"):
        load_checkpoint(write_file(tmp_path / "t.safetensors", header, body + bytes(8)))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b'{"a": ' + nested(100_000).encode() + b"}", "nests deeper than 4"),
        (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b"]}}", "not JSON"),
        ('{"a": 1}'.encode("utf-16"), "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"a": "\\"[[[[[[[[[[[[\\\\"}', "phoenix checkpoint metadata"),  # brackets in a string
    ],
    ids=["nested", "long-integer", "utf-16", "array", "brackets-in-a-string"],
)
def test_header_json_is_checked_before_it_is_used(tmp_path, text, match):
    with pytest.raises(NotACheckpointError, match=match):
        load_checkpoint(write_file(tmp_path / "h.safetensors", text, b""))


def test_a_100_mb_header_of_brackets_is_refused_at_once(tmp_path):
    path = write_file(tmp_path / "deep.safetensors", b"[" * 100_000_000, b"")
    started = time.monotonic()
    with pytest.raises(NotACheckpointError, match="nests deeper than 4"):
        load_checkpoint(path)
    assert time.monotonic() - started < 2  # ~0.1 s; json.loads would recurse (RecursionError)


# -- what the file is: only a regular file is read ---------------------------------------------


def within(seconds: float, call):
    """`call()`'s result or exception, failing if it takes longer (it would block forever)."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_run(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds}s"
    return outcome[0]


def _run(call):
    try:
        return call()
    except Exception as e:  # returned for the test to check
        return e


def sysfs_file() -> Path:
    for name in ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/profiling",
                 "/sys/devices/system/cpu/online"):  # fmt: skip
        if os.access(name, os.R_OK):
            return Path(name)
    pytest.skip("no readable sysfs file")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "2.safetensors")
    error = within(10, lambda: load_checkpoint(tmp_path / "2.safetensors"))
    assert isinstance(error, NotACheckpointError) and "is a FIFO" in str(error)


def test_a_socket_and_a_device_are_refused(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s.safetensors"))
        with pytest.raises(NotACheckpointError, match="is a socket"):
            load_checkpoint(tmp_path / "s.safetensors")
    with pytest.raises(NotACheckpointError, match="is a character device"):
        load_checkpoint("/dev/null")


def test_a_symlink_to_a_sysfs_or_procfs_file_is_refused(tmp_path):
    (tmp_path / "sys.safetensors").symlink_to(sysfs_file())  # 4096 bytes, reads 20: unmappable
    with pytest.raises(NotACheckpointError, match="cannot be memory-mapped"):
        load_checkpoint(tmp_path / "sys.safetensors")
    (tmp_path / "proc.safetensors").symlink_to("/proc/self/status")  # 0 bytes, reads 1,000
    with pytest.raises(NotACheckpointError, match="empty"):
        load_checkpoint(tmp_path / "proc.safetensors")


def test_a_symlink_to_a_checkpoint_loads_and_a_dangling_one_is_refused(tmp_path,
                                                                       parity_checkpoint):  # fmt: skip
    (tmp_path / "link.safetensors").symlink_to(parity_checkpoint)
    assert load_checkpoint(tmp_path / "link.safetensors").info.file_sha256
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "absent")
    with pytest.raises(NotACheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "dangling.safetensors")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_is_refused(tmp_path, parity_checkpoint):
    path = tmp_path / "locked.safetensors"
    shutil.copyfile(parity_checkpoint, path)
    path.chmod(0)
    with pytest.raises(UnreadableCheckpointError, match="Permission denied"):
        load_checkpoint(path)


def test_an_io_error_while_reading_is_refused(parity_checkpoint, monkeypatch):
    def fail(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", fail)
    with pytest.raises(UnreadableCheckpointError, match="reading byte 0: Input/output error"):
        verify_file(parity_checkpoint)
