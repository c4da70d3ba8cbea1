import pytest

from server.buckets import BatchShape, BucketPlan, make_plan, powers_of_two_up_to


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
    assert produced == shapes


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
    plan = BucketPlan((1, 2, 4), (16, 64), (16, 64, 256, 1024), 4096)
    assert plan.window_for(512, 64) == 256  # 2 x (1+64+256) = 642 < 1 x (1+64+1024) = 1089
    assert plan.window_for(2800, 64) == 1024  # 3 x 1089 = 3267 < 11 x 321 = 3531
    assert plan.window_for(32, 64) == 64  # 129 < 2 x 81
    assert plan.window_for(8, 0) == 16
