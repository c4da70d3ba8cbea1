"""The batch-composition policy as a plain function: no asyncio, no model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from server.scheduling.buckets import BucketPlan
from server.scheduling.composition import MAX_PADDING_ROWS, next_batch_size

PLAN = BucketPlan((1, 2, 4, 8), (16, 64), (8, 32, 128), max_batch_candidates=256)


def test_an_empty_queue_makes_no_batch():
    assert next_batch_size([], PLAN) == 0


def test_like_pieces_fill_the_rows():
    assert next_batch_size([(64, 32)] * 8, PLAN) == 8
    assert next_batch_size([(64, 32)] * 20, PLAN) == 8  # rows bucket is full


def test_the_candidate_budget_bounds_a_batch():
    # 128-slot windows: 256 / 128 = 2 rows at most.
    assert next_batch_size([(64, 128)] * 5, PLAN) == 2


def test_a_small_window_does_not_ride_in_a_row_padded_for_a_big_one():
    # Alone, (16, 8) costs 1 + 16 + 8 = 25 tokens; beside a 128-window it would cost a
    # whole 1 + 64 + 128 row: more than twice, so it starts the next batch.
    assert next_batch_size([(64, 128), (16, 8)], PLAN) == 1
    # The other way round the big piece is the one that would be mostly padding for the
    # small one's batch, and it costs about its own size: it joins.
    assert next_batch_size([(64, 120), (64, 128)], PLAN) == 2


def test_whole_rows_of_padding_are_cut_back():
    # 3 pieces would run as 4 rows, one padding (25% > 20%): run 2 now, 1 next.
    assert next_batch_size([(64, 32)] * 3, PLAN) == 2
    # 7 of 8 rows is 12.5% padding: kept.
    assert next_batch_size([(64, 32)] * 7, PLAN) == 7


def test_the_policy_stops_consuming_at_the_first_piece_that_does_not_join():
    consumed = []

    def queue():
        for piece in [(64, 32)] * 8 + [(64, 32)] * 1000:
            consumed.append(piece)
            yield piece

    assert next_batch_size(queue(), PLAN) == 8
    assert len(consumed) == 9


pieces = st.lists(st.tuples(st.integers(0, 64), st.integers(1, 128)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(pieces)
def test_every_decision_fits_a_planned_shape_with_bounded_padding(queue):
    count = next_batch_size(queue, PLAN)
    assert (count == 0) == (not queue)
    if count:
        taken = queue[:count]
        shape = PLAN.shape_for(count, max(h for h, _ in taken), max(c for _, c in taken))
        assert shape is not None
        assert shape.rows - count <= MAX_PADDING_ROWS * shape.rows or count == 1


@settings(max_examples=300, deadline=None)
@given(pieces, st.data())
def test_while_shapes_compile_every_decision_fits_a_compiled_one(queue, data):
    # Warm-up compiles the essential shapes first, then the rest in any order; at every point
    # in between, batches may only use what is compiled.
    rest = [s for s in PLAN.shapes() if s not in PLAN.essential()]
    compiled = data.draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    plan = PLAN.with_ready([*PLAN.essential(), *compiled])
    count = next_batch_size(queue, plan)
    assert (count == 0) == (not queue)  # the essential shapes hold any piece
    if count:
        taken = queue[:count]
        shape = plan.shape_for(count, max(h for h, _ in taken), max(c for _, c in taken))
        assert shape is not None and (plan.ready is None or shape in plan.ready)
        assert shape.rows >= count
    for m, n in ((1, 0), (100, 64), (2800, 10)):  # windows too: only compiled ones
        window = plan.window_for(m, n)
        assert plan.shape_for(1, n, window) is not None
