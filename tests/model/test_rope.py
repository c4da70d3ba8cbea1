"""The reference test cases for right-anchored positions, and the bucket-size contract."""

import jax.numpy as jnp
import numpy as np
import pytest

from model import right_anchored_rope_positions, sequence_positions
from model.rope import apply_rope


def test_output_shape():
    positions = right_anchored_rope_positions(jnp.ones((2, 10), bool), 6, 1)
    assert positions.shape == (2, 10)


def test_prefix_positions_preserved():
    positions = right_anchored_rope_positions(jnp.ones((1, 10), bool), 6, 2)
    assert float(positions[0, 0]) == 0.0
    assert float(positions[0, 1]) == 1.0


def test_candidates_share_position():
    num_prefix, history_len, num_candidates = 1, 4, 3
    t = num_prefix + history_len + num_candidates
    positions = right_anchored_rope_positions(jnp.ones((1, t), bool), history_len, num_prefix)
    history_end = num_prefix + history_len
    for c in range(num_candidates):
        assert float(positions[0, history_end + c]) == float(history_end)


def test_padding_gets_zero():
    padding_mask = jnp.array([[True, True, True, True, False, False, False, False]])
    positions = right_anchored_rope_positions(padding_mask, 4, 1)
    for i in range(4, 8):
        assert float(positions[0, i]) == 0.0


@pytest.mark.parametrize("valid", range(0, 7))
def test_newest_history_item_is_anchored(valid):
    # History of `valid` items (left-aligned) out of 6 slots, then 2 candidates.
    history_seq_len = 6
    mask = np.zeros((1, 1 + history_seq_len + 2), bool)
    mask[0, 0] = True
    mask[0, 1 : 1 + valid] = True
    mask[0, -2:] = True
    positions = np.array(right_anchored_rope_positions(jnp.array(mask), history_seq_len, 1))[0]
    history_end = 1 + history_seq_len
    if valid:
        assert positions[valid] == history_end - 1  # the newest item
        np.testing.assert_array_equal(
            positions[1 : 1 + valid], np.arange(history_end - valid, history_end)
        )
    assert (positions[-2:] == history_end).all()


@pytest.mark.parametrize("history_slots", [0, 1, 3, 6])
def test_smaller_history_buckets_keep_full_size_positions(history_slots):
    """sequence_positions on a layout of S <= history_seq_len slots equals the reference on the full layout."""
    history_seq_len, valid, candidates = 6, min(3, history_slots), 2
    full = np.zeros((1, 1 + history_seq_len + candidates), bool)
    full[0, 0] = True
    full[0, 1 : 1 + valid] = True
    full[0, -candidates:] = True
    reference = np.array(right_anchored_rope_positions(jnp.array(full), history_seq_len, 1))[0]

    small = np.zeros((1, 1 + history_slots + candidates), bool)
    small[0, 0] = True
    small[0, 1 : 1 + valid] = True
    small[0, -candidates:] = True
    ours = np.array(
        sequence_positions(jnp.array(small), 1 + history_slots, history_seq_len, "right_anchored")
    )[0]
    np.testing.assert_array_equal(ours[: 1 + valid], reference[: 1 + valid])
    np.testing.assert_array_equal(ours[-candidates:], reference[-candidates:])


def test_plain_positions_are_full_layout_slots():
    mask = jnp.ones((1, 1 + 2 + 3), bool)  # 2 of 5 history slots, 3 candidates
    positions = np.array(sequence_positions(mask, 3, 5, "plain"))[0]
    np.testing.assert_array_equal(positions, [0, 1, 2, 6, 7, 8])


def test_more_history_slots_than_the_model_has_is_an_error():
    with pytest.raises(ValueError, match="history_seq_len"):
        sequence_positions(jnp.ones((1, 8), bool), 6, 4, "right_anchored")


def test_rope_at_position_zero_is_identity_and_preserves_norm():
    x = jnp.array(np.random.default_rng(0).normal(size=(1, 3, 2, 8)), jnp.float32)
    positions = jnp.array([[0.0, 5.0, 1000.0]])
    y = np.array(apply_rope(x, positions))
    np.testing.assert_allclose(y[0, 0], np.array(x)[0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=-1), np.linalg.norm(np.array(x), axis=-1), rtol=1e-5
    )


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q = jnp.array(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    k = jnp.array(rng.normal(size=(1, 1, 1, 8)), jnp.float32)

    def score(pq, pk):
        return float(jnp.sum(apply_rope(q, jnp.array([[pq]])) * apply_rope(k, jnp.array([[pk]]))))

    assert score(7.0, 3.0) == pytest.approx(score(24.0, 20.0), rel=1e-5)
