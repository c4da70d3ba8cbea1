"""The declared schema of a request's arrays, and everything derived from it."""

from __future__ import annotations

import asyncio
import dataclasses
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import PhoenixModelConfig
from request.columns import COLUMNS, SCHEMA, Column, Part, Schema
from request.encoding import encode
from request.hashing import TableRows
from server.door import ipc
from server.engine.prefix_cache import prefix_key
from tests.helpers import random_request

ROWS = TableRows(11, 1031, 97)

# A trial: one more history array and one more candidate array, neither hashed.
TRIAL = Schema((
    *COLUMNS,
    Column("history_dwell_ms", "uint16", Part.HISTORY, None, None, "history_dwell_ms",
           "how long each event's post was on screen, [n]"),
    Column("candidate_media", "float32", Part.CANDIDATE, "num_actions", None, "candidate_media",
           "a per-candidate feature vector, [m, A]"),
))  # fmt: skip


def trial_raw(rng: np.random.Generator, n: int, m: int):
    """A RawRequest with the trial's two raw columns beside the standard ones."""
    raw = random_request(rng, n, m)
    return types.SimpleNamespace(
        **{f.name: getattr(raw, f.name) for f in dataclasses.fields(raw)},
        num_history=n, num_candidates=m,
        history_dwell_ms=rng.integers(0, 60_000, n).astype(np.uint16),
        candidate_media=rng.random((m, 19), dtype=np.float32),
    )  # fmt: skip


def test_the_schema_is_the_one_list_of_arrays(parity_config):
    encoded = encode(random_request(np.random.default_rng(0), 5, 3), parity_config, ROWS)
    names = [c.name for c in COLUMNS]
    assert [f.name for f in dataclasses.fields(encoded)] == names
    assert list(SCHEMA.batch_type._fields) == names
    prefix, candidates = SCHEMA.split(SCHEMA.empty_batch(SCHEMA.layout(parity_config), 2, 4, 6))
    assert list(prefix._fields) + list(candidates._fields) == names
    assert all(c.part.prefix for c in SCHEMA.prefix)
    assert not any(c.part.prefix for c in SCHEMA.candidates)


def test_a_field_added_to_a_copy_of_the_schema_reaches_every_derived_piece(parity_config):
    rng = np.random.default_rng(1)
    layout = TRIAL.layout(parity_config)
    raw = trial_raw(rng, n=5, m=4)

    # The encoded request: the raw columns copied through in their dtypes.
    encoded = encode(raw, parity_config, ROWS, schema=TRIAL)
    np.testing.assert_array_equal(encoded.history_dwell_ms, raw.history_dwell_ms)
    assert encoded.history_dwell_ms.dtype == np.uint16
    assert encoded.candidate_media.shape == (4, 19) and encoded.num_history == 5

    # The padded batch, its filling, and the prefix / candidate split.
    batch = TRIAL.empty_batch(layout, 2, 8, 6)
    assert batch.history_dwell_ms.shape == (2, 8) and batch.candidate_media.shape == (2, 6, 19)
    TRIAL.fill_prefix(batch, 1, encoded)
    TRIAL.fill_candidates(batch, 1, encoded, 1, 4)
    np.testing.assert_array_equal(batch.history_dwell_ms[1, :5], raw.history_dwell_ms)
    np.testing.assert_array_equal(batch.candidate_media[1, :3], raw.candidate_media[1:4])
    prefix, candidates = TRIAL.split(batch)
    assert "history_dwell_ms" in prefix._fields and "candidate_media" in candidates._fields
    assert TRIAL.empty_prefix(layout, 3, 8).history_dwell_ms.shape == (3, 8)
    assert TRIAL.empty_candidates(layout, 3, 6).candidate_media.shape == (3, 6, 19)

    # The frontend-worker frame.
    frame = ipc.submit_frame(9, None, 0, encoded, layout)
    _, payload = asyncio.run(_read(frame))
    got = ipc.parse_submit(payload, layout)[3]
    np.testing.assert_array_equal(got.history_dwell_ms, encoded.history_dwell_ms)
    np.testing.assert_array_equal(got.candidate_media, encoded.candidate_media)

    # The prefix-cache key: the new history array is part of it, the candidate one is not.
    key = TRIAL.prefix_digest(encoded)
    changed = dataclasses.replace(encoded, history_dwell_ms=encoded.history_dwell_ms + 1)
    assert TRIAL.prefix_digest(changed) != key
    other = dataclasses.replace(encoded, candidate_media=encoded.candidate_media * 2)
    assert TRIAL.prefix_digest(other) == key

    # The rate-measurement request.
    filled = TRIAL.filled(layout, 7, 3, row=2)
    assert filled.history_dwell_ms.shape == (7,) and not filled.history_dwell_ms.any()
    assert filled.candidate_media.shape == (3, 19)
    assert (filled.user_rows == 2).all() and (filled.candidate_post_rows == 2).all()


def test_a_schema_must_describe_every_part_once_per_name():
    with pytest.raises(ValueError, match="repeat"):
        Schema((*COLUMNS, COLUMNS[0]))
    with pytest.raises(ValueError, match="candidate"):
        Schema(c for c in COLUMNS if c.part is not Part.CANDIDATE)


@st.composite
def prefix_change(draw):
    """A request, and the same request with one value of one prefix array changed."""
    n = draw(st.integers(0, 12))
    raw = random_request(
        np.random.default_rng(draw(st.integers(0, 2**32))), n, draw(st.integers(0, 5))
    )
    column = draw(st.sampled_from([c for c in SCHEMA.prefix
                                   if c.part is Part.USER or n > 0]))  # fmt: skip
    return raw, column, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=300, deadline=None)
@given(prefix_change())
def test_requests_that_differ_in_any_prefix_array_never_share_a_cache_key(parity_config, case):
    raw, column, seed = case
    encoded = encode(raw, parity_config, ROWS)
    value = np.array(getattr(encoded, column.name))
    flat = value.reshape(-1)
    i = seed % flat.size
    flat[i] = flat[i] ^ 1 if value.dtype == np.uint8 else flat[i] + 1 + seed % 7
    other = dataclasses.replace(encoded, **{column.name: value})
    assert prefix_key("v", other) != prefix_key("v", encoded)
    # ... while the candidates, whatever they are, never change it.
    fewer = dataclasses.replace(encoded, **{c.name: getattr(encoded, c.name)[:0]
                                            for c in SCHEMA.candidates})  # fmt: skip
    assert prefix_key("v", fewer) == prefix_key("v", encoded)


def test_a_shorter_history_window_is_another_key(parity_config):
    raw = random_request(np.random.default_rng(5), 6, 2)
    encoded = encode(raw, parity_config, ROWS)
    shorter = dataclasses.replace(encoded, **{c.name: getattr(encoded, c.name)[1:]
                                              for c in SCHEMA.columns if c.part is Part.HISTORY})  # fmt: skip
    assert prefix_key("v", shorter) != prefix_key("v", encoded)


def test_columns_resolve_widths_from_the_config(parity_config: PhoenixModelConfig):
    shapes = dict((name, shape) for name, _, shape in SCHEMA.layout(parity_config).shapes(3, 4))
    h = parity_config.hash_config
    assert shapes["user_rows"] == (h.num_user_hashes,)
    assert shapes["history_actions"] == (3, parity_config.num_actions)
    assert shapes["candidate_surface"] == (4,)


async def _read(data: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await ipc.read_frame(reader)
