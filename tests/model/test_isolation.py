"""Candidate isolation as a property: a candidate's logits depend on the user, the history and
that candidate only, never on the other candidates, its slot, its batch row or the padding."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import Ranker, load_checkpoint, make_forward
from request.actions import NUM_ACTIONS
from request.encoding import encode
from request.layout import Piece, pack_rows
from request.raw import RawRequest
from tests.helpers import with_candidates

ATOL = 1e-5
SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def model(parity_checkpoint):
    ckpt = load_checkpoint(parity_checkpoint)
    return (
        ckpt,
        Ranker(ckpt.state.params, ckpt.config),
        jax.jit(make_forward(ckpt.config, ckpt.rows).apply),
    )


ids = st.integers(min_value=0, max_value=2**64 - 1)
surface = st.integers(min_value=0, max_value=15)


@st.composite
def requests(draw, min_candidates=1, max_candidates=20):
    n = draw(st.integers(0, 24))
    m = draw(st.integers(min_candidates, max_candidates))
    actions = draw(
        st.lists(
            st.lists(st.booleans(), min_size=NUM_ACTIONS, max_size=NUM_ACTIONS),
            min_size=n,
            max_size=n,
        )
    )
    return RawRequest(
        user_id=draw(ids),
        history_post_ids=np.array(draw(st.lists(ids, min_size=n, max_size=n)), np.uint64),
        history_author_ids=np.array(draw(st.lists(ids, min_size=n, max_size=n)), np.uint64),
        history_actions=np.array(actions, np.uint8).reshape(n, NUM_ACTIONS),
        history_surface=np.array(draw(st.lists(surface, min_size=n, max_size=n)), np.int64),
        candidate_post_ids=np.array(draw(st.lists(ids, min_size=m, max_size=m)), np.uint64),
        candidate_author_ids=np.array(draw(st.lists(ids, min_size=m, max_size=m)), np.uint64),
        candidate_surface=np.array(draw(st.lists(surface, min_size=m, max_size=m)), np.int64),
    )  # fmt: skip


@SETTINGS
@given(request=requests(), data=st.data())
def test_removing_and_permuting_candidates_changes_nothing(model, request, data):
    _, ranker, _ = model
    full = ranker.logits(request)
    m = request.num_candidates
    index = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=m, unique=True))
    np.testing.assert_allclose(
        ranker.logits(with_candidates(request, index)), full[index], atol=ATOL
    )
    perm = np.random.default_rng(len(index)).permutation(m)
    np.testing.assert_allclose(ranker.logits(with_candidates(request, perm)), full[perm], atol=ATOL)


@SETTINGS
@given(request=requests(max_candidates=6), other=requests())
def test_adding_candidates_and_neighbours_changes_nothing(model, request, other):
    _, ranker, _ = model
    alone = ranker.logits(request)
    # Append another request's candidates to this user's request.
    bigger = RawRequest(
        request.user_id, request.history_post_ids, request.history_author_ids,
        request.history_actions, request.history_surface,
        np.concatenate([request.candidate_post_ids, other.candidate_post_ids]),
        np.concatenate([request.candidate_author_ids, other.candidate_author_ids]),
        np.concatenate([request.candidate_surface, other.candidate_surface]),
    )  # fmt: skip
    np.testing.assert_allclose(ranker.logits(bigger)[: request.num_candidates], alone, atol=ATOL)
    # The same request in another batch row, beside another request.
    _, beside = ranker.logits_many([other, request])
    np.testing.assert_allclose(beside, alone, atol=ATOL)


@SETTINGS
@given(
    request=requests(max_candidates=12),
    window=st.integers(1, 12),
    extra_history=st.integers(0, 16),
    extra_candidates=st.integers(0, 5),
    row=st.integers(0, 2),
)
def test_any_padded_shape_gives_the_same_logits(
    model, request, window, extra_history, extra_candidates, row
):
    ckpt, ranker, apply = model
    config = ckpt.config
    expected = ranker.logits(request)
    encoded = encode(request, config, ckpt.rows)
    history_slots = min(config.history_seq_len, max(1, encoded.num_history + extra_history))
    spans = [
        (s, min(s + window, request.num_candidates))
        for s in range(0, request.num_candidates, window)
    ]
    pieces = [Piece(encoded, s, e) for s, e in spans]
    # Shift the pieces down by `row` all-padding rows.
    batch = pack_rows(config, pieces, len(pieces) + row, history_slots, window + extra_candidates)
    if row:
        batch = type(batch)(*(np.roll(a, row, axis=0) for a in batch))
    out = np.asarray(apply(ckpt.state.params, batch))
    got = np.concatenate([out[row + i, : e - s] for i, (s, e) in enumerate(spans)])
    np.testing.assert_allclose(got, expected, atol=ATOL)
