"""Checkpoints and the exchange format: bit-exact round trips and a clear error per problem."""

from __future__ import annotations

import json
import struct

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
from model.checkpoint import FORMAT, FORMAT_VERSION, content_sha256
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
