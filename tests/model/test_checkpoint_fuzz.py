"""Whatever a file holds, `load_checkpoint` loads it or raises a CheckpointError: a small valid
checkpoint with its header's values, JSON and bytes mutated, truncated anywhere, bits flipped."""

from __future__ import annotations

import functools
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import model.params
from model import CheckpointError, ChecksumMismatchError, PhoenixModelConfig, load_checkpoint
from model.generate import init_checkpoint
from request.hashing import TableRows

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
TINY = {"model": {"emb_size": 8, "key_size": 4, "num_q_heads": 2, "num_kv_heads": 1,
                  "num_layers": 1, "widening_factor": 1.0, "attn_output_multiplier": 1.0},
        "emb_size": 8, "history_seq_len": 2, "candidate_seq_len": 2}  # fmt: skip

# Any JSON value, and integers around the limits a loader might overflow at.
INTEGERS = st.integers(-(2**65), 2**65) | st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64])
JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
JSON_BYTES = st.binary(max_size=3) | st.sampled_from([b"[", b"]", b"{", b"}", b'"', b",", b":",
                                                      b"\\", b"0", b"-1", b"1e999", b"\xff"])  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    """A valid checkpoint of a one-layer width-8 model: 12 KB."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    init_checkpoint(path, PhoenixModelConfig.from_dict(TINY), TableRows(2, 2, 2))
    return path.read_bytes()


@pytest.fixture(scope="module", autouse=True)
def traced_once():
    """The shapes a config asks for depend on nothing else: trace each model once (~60 ms),
    not once per example."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            model.params, "expected_shapes", functools.cache(model.params.expected_shapes)
        )
        yield


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzzed.safetensors"


def split(data: bytes) -> tuple[bytes, bytes]:
    """A file -> (its header's JSON text, its data section)."""
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + n], data[8 + n :]


def join(text: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text + body


def load(target, data: bytes):
    """load_checkpoint of a file holding `data`: a Checkpoint, or the CheckpointError it
    raised. Any other exception fails the test."""
    target.write_bytes(data)
    try:
        return load_checkpoint(target)
    except CheckpointError as e:
        return e


@SETTINGS
@given(st.data())
def test_any_header_value_loads_or_is_refused(tiny, target, data):
    text, body = split(tiny)
    header = json.loads(text)
    name = data.draw(st.sampled_from(sorted(header)), "entry")
    entry = header[name]
    if name == "__metadata__":
        key = data.draw(st.sampled_from(sorted(entry)) | st.text(max_size=4), "key")
        if key == "config" and data.draw(st.booleans(), "inside the config"):
            config = json.loads(entry[key])
            section = data.draw(st.sampled_from([config, config["model"]]), "section")
            section[data.draw(st.sampled_from(sorted(section)), "field")] = data.draw(JSON)
            entry[key] = json.dumps(config)
        else:
            entry[key] = data.draw(JSON | st.text(), "value")
    else:
        key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), "key")
        value = entry.get(key)
        if isinstance(value, list) and value and data.draw(st.booleans(), "one element"):
            value[data.draw(st.integers(0, len(value) - 1))] = data.draw(JSON, "element")
        elif data.draw(st.booleans(), "delete"):
            entry.pop(key, None)
        else:
            entry[key] = data.draw(JSON, "value")
    if data.draw(st.booleans(), "replace the whole entry"):
        header[name] = data.draw(JSON, "entry value")
    load(target, join(json.dumps(header).encode(), body))


@SETTINGS
@given(st.data())
def test_any_edit_of_the_header_text_loads_or_is_refused(tiny, target, data):
    text, body = split(tiny)
    text = bytearray(text)
    for _ in range(data.draw(st.integers(1, 4), "edits")):
        at = data.draw(st.integers(0, len(text)), "at")
        cut = data.draw(st.integers(0, 3), "bytes replaced")
        text[at : at + cut] = data.draw(JSON_BYTES, "replacement")
    load(target, join(bytes(text), body))


@SETTINGS
@given(st.data())
def test_a_cut_anywhere_is_refused(tiny, target, data):
    end = data.draw(st.integers(0, len(tiny) - 1), "length kept")
    assert isinstance(load(target, tiny[:end]), CheckpointError)


@SETTINGS
@given(st.data())
def test_flipped_bits_in_the_data_fail_their_checksum(tiny, target, data):
    flipped = bytearray(tiny)
    bits = data.draw(st.lists(st.integers(0, len(tiny) * 8 - 1), min_size=1, max_size=3))
    for bit in bits:
        flipped[bit // 8] ^= 1 << bit % 8
    result = load(target, bytes(flipped))
    header_end = 8 + len(split(tiny)[0])
    if all(bit // 8 >= header_end for bit in bits) and flipped != tiny:
        assert isinstance(result, ChecksumMismatchError), result


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_any_header_length_but_the_true_one_is_refused(tiny, target, length):
    result = load(target, struct.pack("<Q", length) + tiny[8:])
    assert isinstance(result, CheckpointError) or length == len(split(tiny)[0])
