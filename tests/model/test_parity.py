"""The reference implementation's own logits, reproduced by the offline forward pass."""

from __future__ import annotations

import filecmp

import jax
import numpy as np
import pytest

from model import Ranker, load_checkpoint, make_forward
from request.encoding import encode
from request.layout import Piece, pack_rows, windows
from tests.conftest import PARITY_ATOL, PARITY_CASES, PARITY_DIR, PARITY_RTOL, ROOT

SHARED = ROOT.parent / "shared" / "fixtures" / "reference-parity"


@pytest.mark.skipif(
    not SHARED.exists(), reason=f"runs where the shared source material is checked out ({SHARED})"
)
def test_vendored_fixture_is_the_shared_one():
    for name in ("cases.json", "config.json", "params.npz"):
        assert filecmp.cmp(PARITY_DIR / name, SHARED / name, shallow=False), name


def test_fixture_covers_what_the_contract_promises(parity_config):
    histories = {c.request.num_history for c in PARITY_CASES}
    candidates = {c.request.num_candidates for c in PARITY_CASES}
    assert 0 in histories and max(histories) > parity_config.history_seq_len
    assert 1 in candidates and max(candidates) > 4 * parity_config.candidate_seq_len


@pytest.fixture(scope="module")
def ranker(parity_checkpoint):
    return Ranker.from_checkpoint(parity_checkpoint)


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: c.id)
def test_offline_forward_reproduces_reference_logits(ranker, case):
    got = ranker.logits(case.request)
    assert got.shape == case.expected.shape
    np.testing.assert_allclose(got, case.expected, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_dense_reference_attention_reproduces_too(parity_checkpoint):
    dense = Ranker.from_checkpoint(parity_checkpoint, attention="dense")
    got = dense.logits_many([c.request for c in PARITY_CASES])
    for logits, case in zip(got, PARITY_CASES, strict=True):
        np.testing.assert_allclose(logits, case.expected, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_every_padding_size_gives_the_same_logits(parity_checkpoint):
    """History slots S from the request's own length to history_seq_len, any window and slot
    count, and all-padding rows. Cases that need the same S share one batch (rows padded to
    one fixed count), so each (S, C) shape compiles once."""
    ckpt = load_checkpoint(parity_checkpoint)
    config, rows = ckpt.config, ckpt.rows
    apply = jax.jit(make_forward(config, rows).apply)
    encoded = [encode(case.request, config, rows) for case in PARITY_CASES]
    slots_of = [
        sorted(s for s in {max(e.num_history, 1), e.num_history + 1, e.num_history + 4,
                           config.history_seq_len} if s <= config.history_seq_len)
        for e in encoded
    ]  # fmt: skip
    checked, worst = 0, 0.0
    for window, extra_slots in ((1, 0), (3, 2), (8, 0), (64, 9)):
        for history_slots in sorted(set().union(*slots_of)):
            group = [i for i, slots in enumerate(slots_of) if history_slots in slots]
            spans = {i: windows(PARITY_CASES[i].request.num_candidates, window) for i in group}
            pieces = [Piece(encoded[i], s, e) for i in group for s, e in spans[i]]
            num_rows = 1 + sum(len(windows(c.request.num_candidates, window)) for c in PARITY_CASES)
            batch = pack_rows(config, pieces, num_rows, history_slots, window + extra_slots)
            out = iter(np.asarray(apply(ckpt.state.params, batch)))  # rows past the pieces: padding
            for i in group:
                got = np.concatenate([next(out)[: e - s] for s, e in spans[i]])
                expected = PARITY_CASES[i].expected
                np.testing.assert_allclose(got, expected, atol=PARITY_ATOL, rtol=PARITY_RTOL)
                worst = max(worst, float(np.abs(got - expected).max()))
                checked += 1
    assert checked == 4 * sum(len(slots) for slots in slots_of)
    assert worst < PARITY_ATOL


def test_bfloat16_forward_stays_close_to_the_reference(parity_checkpoint):
    """The accelerator dtype, run here on CPU: parameters stay float32, activations bfloat16,
    softmax and norms float32. bfloat16 keeps ~3 significant digits, hence the looser bound."""
    import jax.numpy as jnp

    bf16 = Ranker.from_checkpoint(parity_checkpoint, dtype=jnp.bfloat16)
    got = np.concatenate(bf16.logits_many([c.request for c in PARITY_CASES]))
    want = np.concatenate([c.expected for c in PARITY_CASES])
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 0.15
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
