"""Prefix once, candidates in chunks (model.prefix): the same logits as the one-pass forward
and the reference fixture, for any history length, candidate count, chunking and packing."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import Ranker, load_checkpoint
from model.prefix import (
    empty_slab,
    encode_prefixes,
    score_chunks,
    slab_slot_bytes,
    write_prefixes,
)
from request.columns import SCHEMA
from request.encoding import encode
from request.layout import Piece, empty_batch, fill_candidates, fill_prefix, windows
from tests.conftest import PARITY_ATOL, PARITY_CASES, PARITY_RTOL
from tests.model.test_isolation import requests

PREFIX_ROWS, CHUNKS, SLOTS = 4, 16, 8  # fixed shapes: each compiles once per chunk size


class Engine:
    """The two jitted halves over one slab, shaped as a server would use them."""

    def __init__(self, ckpt, dtype=jnp.float32, config=None):
        self.config = config or ckpt.config
        self.params = jax.device_put(ckpt.state.params)
        self.encode = jax.jit(
            lambda params, slab, prefix, slots: write_prefixes(
                slab, slots, encode_prefixes(params, self.config, dtype, prefix)
            ),
            donate_argnums=1,
        )
        self.score = jax.jit(functools.partial(score_chunks, config=self.config, dtype=dtype))
        self.slab = empty_slab(self.config, SLOTS, self.config.history_seq_len, dtype)

    def write(self, requests_at_slots: dict[int, object]) -> None:
        """Encode requests (EncodedRequest) into the given slots, in PREFIX_ROWS-row calls."""
        items = list(requests_at_slots.items())
        s = self.config.history_seq_len
        for start in range(0, len(items), PREFIX_ROWS):
            part = items[start : start + PREFIX_ROWS]
            batch = empty_batch(self.config, PREFIX_ROWS, s, 0)
            slots = np.full(PREFIX_ROWS, SLOTS, np.int32)  # padding rows: dropped
            for r, (slot, req) in enumerate(part):
                fill_prefix(batch, r, req)
                slots[r] = slot
            self.slab = self.encode(self.params, self.slab, SCHEMA.split(batch)[0], slots)

    def chunks(self, pieces_at_slots: list[tuple[int, Piece]], size: int) -> np.ndarray:
        """Score pieces (each <= size candidates) against their slots: [len, size, A]."""
        batch = empty_batch(self.config, CHUNKS, 0, size)
        slots = np.zeros(CHUNKS, np.int32)
        for r, (slot, piece) in enumerate(pieces_at_slots):
            fill_candidates(batch, r, piece)
            slots[r] = slot
        chunks = SCHEMA.split(batch)[1]
        out = self.score(self.params, slab=self.slab, chunks=chunks, chunk_slot=slots)
        return np.asarray(out)[: len(pieces_at_slots)]


@pytest.fixture(scope="module")
def checkpoint(parity_checkpoint):
    return load_checkpoint(parity_checkpoint)


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine(checkpoint)


def score_requests(engine, encoded, size, order_seed=0):
    """Score requests: prefixes in shuffled slots, chunks of `size` in shuffled order."""
    rng = np.random.default_rng(order_seed)
    results = []
    for start in range(0, len(encoded), SLOTS):
        group = encoded[start : start + SLOTS]
        slot_of = rng.permutation(SLOTS)[: len(group)]
        engine.write({int(slot_of[i]): e for i, e in enumerate(group)})
        pieces = [(i, Piece(e, s, t)) for i, e in enumerate(group)
                  for s, t in windows(e.num_candidates, size)]  # fmt: skip
        pieces = [pieces[j] for j in rng.permutation(len(pieces))]
        out = {}
        for c in range(0, len(pieces), CHUNKS):
            part = pieces[c : c + CHUNKS]
            scored = engine.chunks([(int(slot_of[i]), p) for i, p in part], size)
            for (i, p), logits in zip(part, scored, strict=True):
                out[(i, p.start)] = logits[: p.stop - p.start]
        for i, e in enumerate(group):
            spans = windows(e.num_candidates, size)
            results.append(np.concatenate([out[(i, s)] for s, _ in spans]))
    return results


@pytest.mark.parametrize("size", [1, 4, 16])
def test_prefix_once_reproduces_the_reference_fixture(engine, checkpoint, size):
    encoded = [encode(c.request, checkpoint.config, checkpoint.rows) for c in PARITY_CASES]
    got = score_requests(engine, encoded, size, order_seed=size)
    for logits, case in zip(got, PARITY_CASES, strict=True):
        assert logits.shape == case.expected.shape
        np.testing.assert_allclose(logits, case.expected, atol=PARITY_ATOL, rtol=PARITY_RTOL)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    batch=st.lists(requests(max_candidates=40), min_size=1, max_size=11),
    size=st.sampled_from([1, 4, 16]),
    seed=st.integers(0, 2**16),
)
def test_any_packing_gives_the_one_pass_logits(engine, checkpoint, batch, size, seed):
    reference = Ranker(checkpoint.state.params, checkpoint.config)
    encoded = [encode(r, checkpoint.config, checkpoint.rows) for r in batch]
    got = score_requests(engine, encoded, size, order_seed=seed)
    for logits, expected in zip(got, reference.logits_many(batch), strict=True):
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_plain_positions_match_when_chunks_are_reference_windows(checkpoint):
    """A 'plain' model gives each candidate slot its own phase: chunks equal to the reference
    windows (candidate_seq_len) reproduce the one-pass forward."""
    config = dataclasses.replace(checkpoint.config, rope_positions="plain")
    plain = dataclasses.replace(checkpoint, config=config)
    engine = Engine(plain, config=config)
    requests_ = [c.request for c in PARITY_CASES[:6]]
    encoded = [encode(r, config, checkpoint.rows) for r in requests_]
    got = score_requests(engine, encoded, config.candidate_seq_len)
    expected = Ranker(checkpoint.state.params, config).logits_many(requests_)
    for logits, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(logits, want, atol=1e-5, rtol=1e-5)


def test_bfloat16_chunks_stay_close_to_float32(checkpoint):
    """The accelerator dtype runs the same code path; its error is bfloat16's, not a bug's."""
    engine = Engine(checkpoint, dtype=jnp.bfloat16)
    assert engine.slab.keys.dtype == jnp.bfloat16
    encoded = [encode(c.request, checkpoint.config, checkpoint.rows) for c in PARITY_CASES[:4]]
    for logits, case in zip(score_requests(engine, encoded, 16), PARITY_CASES, strict=False):
        np.testing.assert_allclose(logits, case.expected, atol=0.1, rtol=0.05)


def test_slot_bytes_are_the_slabs_bytes(checkpoint):
    slab = empty_slab(checkpoint.config, 3, 10, jnp.float32)
    total = sum(a.nbytes for a in slab)
    assert slab_slot_bytes(checkpoint.config, 10, jnp.float32) * 3 == total
    assert slab.slots == 3 and slab.history_slots == 10
