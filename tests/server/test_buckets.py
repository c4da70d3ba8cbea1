import pytest

from server.scheduling.buckets import BatchShape, BucketPlan, make_plan, powers_of_two_up_to


def test_powers_of_two():
    assert powers_of_two_up_to(1) == (1,)
    assert powers_of_two_up_to(32) == (1, 2, 4, 8, 16, 32)
    assert powers_of_two_up_to(24) == (1, 2, 4, 8, 16, 24)


def test_shape_for_picks_the_smallest_bucket():
    plan = BucketPlan((1, 2, 4, 8), (16, 64), (16, 64, 256), 1024)
    assert plan.shape_for(3, 0, 10) == BatchShape(4, 16, 16)
    assert plan.shape_for(1, 17, 65) == BatchShape(1, 64, 256)
    assert plan.shape_for(8, 64, 256) is None  # 8 x 256 slots exceed the budget
    assert plan.shape_for(9, 1, 1) is None
    assert plan.window == 256 and plan.max_rows == 8


def test_shapes_are_exactly_what_shape_for_can_return():
    plan = BucketPlan((1, 2, 4, 8), (16, 64), (16, 64, 256), 1024)
    shapes = set(plan.shapes())
    produced = {
        plan.shape_for(r, s, c) for r in range(1, 9) for s in range(0, 65) for c in range(1, 257)
    } - {None}
    prefixes = {x for r in range(1, 20) for s in (16, 64) for x in plan.prefix_calls(r, s)}
    assert produced | prefixes == shapes
    assert all(x.is_prefix for x in prefixes) and not any(x.is_prefix for x in produced)


def test_prefix_calls_use_the_fewest_compiled_calls():
    plan = BucketPlan((1, 2, 4, 8), (16, 64), (16, 64, 256), 1024)
    assert plan.prefix_calls(0, 64) == []
    assert plan.prefix_calls(3, 64) == [BatchShape(4, 64, 0)]
    assert plan.prefix_calls(19, 16) == [BatchShape(8, 16, 0)] * 2 + [BatchShape(4, 16, 0)]
    early = plan.with_ready(plan.essential())  # only the one-row prefix call is compiled
    assert early.prefix_calls(3, 64) == [BatchShape(1, 64, 0)] * 3


def test_a_chunk_shape_is_offered_only_with_a_prefix_call_of_its_history():
    plan = BucketPlan((1, 2), (16, 64), (16, 64), 1024)
    assert plan.essential() == [BatchShape(1, 64, 0), BatchShape(1, 64, 16), BatchShape(1, 64, 64)]
    chunk_only = plan.with_ready([*plan.essential(), BatchShape(1, 16, 16)])
    assert chunk_only.shape_for(1, 10, 10) == BatchShape(1, 64, 16)  # no (R, 16, 0) yet
    both = plan.with_ready([*plan.essential(), BatchShape(1, 16, 16), BatchShape(2, 16, 0)])
    assert both.shape_for(1, 10, 10) == BatchShape(1, 16, 16)


def test_a_calls_tokens_are_what_it_computes():
    assert BatchShape(4, 64, 0).tokens == 4 * 65 and BatchShape(4, 64, 16).tokens == 64


def test_make_plan_ends_history_buckets_at_the_model_length():
    plan = make_plan(64, 32, (16, 64, 256, 1024))
    assert plan.history_buckets == (16, 64)
    assert plan.row_buckets == (1, 2, 4, 8, 16, 32)
    assert make_plan(64, 4, (8,), history_buckets=(8, 100)).history_buckets == (8, 64)


@pytest.mark.parametrize(
    "args",
    [((), (4,), (4,), 8), ((2, 1), (4,), (4,), 8), ((1,), (4,), (4, 4), 8), ((1,), (4,), (16,), 8)],
)
def test_bad_plans_are_rejected(args):
    with pytest.raises(ValueError):
        BucketPlan(*args)


def test_window_for_minimises_padded_tokens():
    """A chunk costs its slots plus CHUNK_OVERHEAD_TOKENS (8); the prefix is paid once."""
    plan = BucketPlan((1, 2, 4), (16, 64), (16, 64, 256, 1024), 4096)
    assert plan.window_for(512, 64) == 256  # 2 x 264 = 528 < 8 x 72 = 576 < 1 x 1032
    assert plan.window_for(2800, 64) == 256  # 11 x 264 = 2904 < 3 x 1032 = 3096
    assert plan.window_for(32, 64) == 16  # 2 x 24 = 48 < 72
    assert plan.window_for(64, 1) == 64  # 72 < 4 x 24 = 96
    assert plan.window_for(8, 0) == 16
