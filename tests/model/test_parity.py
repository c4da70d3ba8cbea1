"""The reference implementation's own logits, reproduced by the offline forward pass."""

from __future__ import annotations

import filecmp

import jax
import numpy as np
import pytest

from model import Piece, Ranker, encode, load_checkpoint, make_forward, pack_rows
from model.features import windows
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
    """History slots S' from the request's own length to S, any window and slot count."""
    ckpt = load_checkpoint(parity_checkpoint)
    config, rows = ckpt.config, ckpt.rows
    apply = jax.jit(make_forward(config, rows).apply)
    worst = 0.0
    for case in PARITY_CASES:
        encoded = encode(case.request, config, rows)
        n = encoded.num_history
        for history_slots in sorted({max(n, 1), n + 1, n + 4, config.history_seq_len}):
            if history_slots > config.history_seq_len:
                continue
            for window, extra_slots in ((1, 0), (3, 2), (8, 0), (64, 9)):
                spans = windows(case.request.num_candidates, window)
                batch = pack_rows(
                    config,
                    [Piece(encoded, s, e) for s, e in spans],
                    len(spans) + 1,  # one all-padding row as well
                    history_slots,
                    window + extra_slots,
                )
                out = np.asarray(apply(ckpt.state.params, batch))
                got = np.concatenate([out[i, : e - s] for i, (s, e) in enumerate(spans)])
                np.testing.assert_allclose(got, case.expected, atol=PARITY_ATOL, rtol=PARITY_RTOL)
                worst = max(worst, float(np.abs(got - case.expected).max()))
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
