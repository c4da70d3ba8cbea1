"""Hashing a whole request at once equals hashing each column alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import HashConfig
from request.encoding import hash_segments
from request.hashing import TableRows, hash_rows

ids = st.lists(st.integers(0, 2**64 - 1), max_size=20).map(lambda v: np.array(v, np.uint64))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(ids, st.integers(1, 4), st.integers(2, 2**31 - 1)), min_size=1, max_size=5)
)
def test_hash_segments_equals_hash_rows_per_segment(segments):
    fused = hash_segments(segments)
    for (x, k, rows), got in zip(segments, fused, strict=True):
        expected = hash_rows(x, k, rows)
        assert got.dtype == np.int32 and got.shape == (len(x), k)
        np.testing.assert_array_equal(got, expected)


def test_encode_hashes_every_column_with_its_own_table(parity_config):
    from request.encoding import encode
    from tests.helpers import random_request

    rows = TableRows(user=11, post=1031, author=97)
    raw = random_request(np.random.default_rng(3), 40, 9)
    e = encode(raw, parity_config, rows)
    h: HashConfig = parity_config.hash_config
    keep = slice(raw.num_history - min(raw.num_history, parity_config.history_seq_len), None)
    np.testing.assert_array_equal(
        e.user_rows, hash_rows(np.array([raw.user_id], np.uint64), h.num_user_hashes, 11)[0]
    )
    np.testing.assert_array_equal(
        e.history_post_rows, hash_rows(raw.history_post_ids[keep], h.num_item_hashes, 1031)
    )
    np.testing.assert_array_equal(
        e.history_author_rows, hash_rows(raw.history_author_ids[keep], h.num_author_hashes, 97)
    )
    np.testing.assert_array_equal(
        e.candidate_post_rows, hash_rows(raw.candidate_post_ids, h.num_item_hashes, 1031)
    )
    np.testing.assert_array_equal(
        e.candidate_author_rows, hash_rows(raw.candidate_author_ids, h.num_author_hashes, 97)
    )
