"""The reference test cases for make_recsys_attn_mask, plus the bidirectional variant."""

import jax.numpy as jnp
import numpy as np
import pytest

from model import make_recsys_attn_mask
from model.mask import ranking_attn_mask


def test_output_shape():
    assert make_recsys_attn_mask(10, 5).shape == (1, 1, 10, 10)


def test_user_history_has_causal_attention():
    mask = np.array(make_recsys_attn_mask(8, 5))[0, 0]
    for i in range(5):
        for j in range(5):
            assert mask[i, j] == (1 if j <= i else 0), (i, j)


def test_candidates_attend_to_user_history():
    mask = np.array(make_recsys_attn_mask(8, 5))[0, 0]
    assert (mask[5:, :5] == 1).all()


def test_candidates_attend_to_themselves():
    mask = np.array(make_recsys_attn_mask(8, 5))[0, 0]
    assert all(mask[c, c] == 1 for c in range(5, 8))


def test_candidates_do_not_attend_to_other_candidates():
    mask = np.array(make_recsys_attn_mask(8, 5))[0, 0]
    for q in range(5, 8):
        for k in range(5, 8):
            if q != k:
                assert mask[q, k] == 0, (q, k)


def test_full_mask_structure():
    expected = np.array(
        [
            [1, 0, 0, 0, 0, 0],  # user
            [1, 1, 0, 0, 0, 0],  # h1
            [1, 1, 1, 0, 0, 0],  # h2
            [1, 1, 1, 1, 0, 0],  # c1
            [1, 1, 1, 0, 1, 0],  # c2
            [1, 1, 1, 0, 0, 1],  # c3
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(np.array(make_recsys_attn_mask(6, 3))[0, 0], expected)


def test_single_candidate():
    expected = np.tril(np.ones((4, 4), np.float32))
    np.testing.assert_array_equal(np.array(make_recsys_attn_mask(4, 3))[0, 0], expected)


def test_all_candidates():
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(np.array(make_recsys_attn_mask(4, 1))[0, 0], expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_dtype_preserved(dtype):
    assert make_recsys_attn_mask(5, 3, dtype=dtype).dtype == dtype


def test_bidirectional_history_keeps_candidates_isolated():
    mask = np.array(ranking_attn_mask(6, 3, "bidirectional"))[0, 0].astype(int)
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 0, 1, 0],
            [1, 1, 1, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(mask, expected)


def test_causal_ranking_mask_is_the_reference_mask():
    np.testing.assert_array_equal(
        np.array(ranking_attn_mask(9, 4, "causal")), np.array(make_recsys_attn_mask(9, 4)) == 1
    )
