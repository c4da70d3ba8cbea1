"""The batcher alone, against a fake runner whose logits can be worked out by hand.

FakeRunner's logit for candidate j of a request, action a, is `post_row[j] + a / 100`, so a
result in the wrong slot or request is visible. A gate lets a test hold the device busy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model import HashConfig, PhoenixModelConfig, TransformerConfig
from request.encoding import EncodedRequest
from server.config import BatcherConfig
from server.errors import DeadlineExceeded, QueueFull, ShuttingDown
from server.operations.metrics import Metrics
from server.scheduling.batcher import Batcher, BatchFailed
from server.scheduling.buckets import BucketPlan

A = 19
CONFIG = PhoenixModelConfig(
    model=TransformerConfig(emb_size=8, key_size=4, num_q_heads=2, num_kv_heads=1, num_layers=1),
    emb_size=8,
    history_seq_len=4,
    candidate_seq_len=4,
    hash_config=HashConfig(1, 1, 1),
)


@dataclass(frozen=True)
class FakePacked:
    shape: tuple
    pieces: tuple
    model: object = None
    gathered: bool = False  # GatheringRunner's: its rows gathered, how many, in how long
    gathered_rows: int = 0
    gather_seconds: float = 0.0

    @property
    def work_units(self) -> int:
        return self.shape.rows * self.shape.row_units


class FakeRunner:
    config = CONFIG
    seconds_per_unit = 1e-3  # a 1 x 4 x 4 row (9 units) "costs" 9 ms to admission
    score_width = A  # the fake returns one score per action
    model = None  # no versions (see test_reload for swaps)

    def __init__(
        self, plan: BucketPlan | None = None, gated: bool = False, poison: int | None = None
    ):
        self.plan = plan or BucketPlan((1, 2, 4, 8), (4,), (4, 8), 64)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.batches: list[list[int]] = []  # user rows of the requests in each batch
        self.poison = poison

    def pack(self, pieces, model=None):
        shape = self.plan.shape_for(len(pieces), 1, max(p.stop - p.start for p in pieces))
        assert shape is not None, "the batcher formed a batch that fits no planned shape"
        return FakePacked(shape, tuple(pieces), model)

    def run(self, packed: FakePacked, wanted=None) -> np.ndarray:
        self.started.set()
        self.gate.wait(10)
        users = [int(p.request.user_rows[0]) for p in packed.pieces]
        self.batches.append(users)
        if self.poison in users:
            raise RuntimeError("poisoned batch")
        rows, _, slots = packed.shape
        out = np.full((rows, slots, A), np.nan, np.float32)
        for r, p in enumerate(packed.pieces):
            post = p.request.candidate_post_rows[p.start : p.stop, 0]
            out[r, : p.stop - p.start] = post[:, None] + np.arange(A) / 100
        return out


def request(user: int, m: int) -> EncodedRequest:
    return EncodedRequest(
        user_rows=np.array([user], np.int32),
        history_post_rows=np.zeros((0, 1), np.int32),
        history_author_rows=np.zeros((0, 1), np.int32),
        history_actions=np.zeros((0, A), np.uint8),
        history_surface=np.zeros(0, np.int32),
        candidate_post_rows=(1000 * user + np.arange(m, dtype=np.int32))[:, None],
        candidate_author_rows=np.ones((m, 1), np.int32),
        candidate_surface=np.zeros(m, np.int32),
    )


def expected(user: int, m: int) -> np.ndarray:
    return (1000 * user + np.arange(m))[:, None] + np.arange(A)[None] / 100


def make(runner, **config) -> Batcher:
    """A started batcher; no cap on a batch's device time unless the test sets one (the fake
    device prices a row at 9 ms, which the default cap would split)."""
    config.setdefault("max_batch_ms", 1e9)
    batcher = Batcher(runner, BatcherConfig(**config), Metrics(CollectorRegistry()))
    batcher.start()
    return batcher


async def wait_started(runner: FakeRunner) -> None:
    assert await asyncio.to_thread(runner.started.wait, 10), "the device thread never started"


async def busy(runner: FakeRunner, **config) -> tuple[Batcher, asyncio.Future]:
    """A batcher whose (gated) device is busy with a first request, of user 1."""
    batcher = make(runner, **config)
    first = batcher.submit(request(1, 1))
    await wait_started(runner)
    return batcher, first


def test_windows_are_scattered_back_in_request_order():
    async def main():
        runner = FakeRunner()
        batcher = make(runner)
        logits = (await batcher.submit(request(3, 21))).scores  # windows of 8: 8 + 8 + 5
        np.testing.assert_allclose(logits, expected(3, 21))
        assert sorted(sum(runner.batches, [])) == [3, 3, 3]
        await batcher.stop()

    asyncio.run(main())


def test_concurrent_requests_share_batches():
    async def main():
        runner = FakeRunner(gated=True)
        batcher = make(runner, max_batch_wait_ms=50)
        first = batcher.submit(request(1, 2))
        await wait_started(runner)  # the device is busy with request 1
        futures = [batcher.submit(request(u, 3)) for u in range(2, 8)]
        runner.gate.set()
        results = await asyncio.gather(first, *futures)
        for u, logits in zip(range(1, 8), results, strict=True):
            np.testing.assert_allclose(logits.scores, expected(u, 2 if u == 1 else 3))
        assert max(len(b) for b in runner.batches) > 1
        assert len(runner.batches) < 7
        await batcher.stop()

    asyncio.run(main())


def test_full_queue_is_refused_at_once():
    async def main():
        runner = FakeRunner(gated=True)
        batcher, running = await busy(runner, max_queue=2, pipeline_depth=1)
        queued = [batcher.submit(request(2, 1)), batcher.submit(request(3, 1))]
        with pytest.raises(QueueFull, match="retry") as refused:
            batcher.submit(request(4, 1))
        # The hint is the device time ahead: the batch computing now plus one queued request.
        assert refused.value.retry_after_ms == 9 + 9
        runner.gate.set()
        await asyncio.gather(running, *queued)
        assert 4 not in sum(runner.batches, [])
        await batcher.stop()

    asyncio.run(main())


def test_expired_and_cancelled_requests_are_not_computed():
    async def main():
        runner = FakeRunner(gated=True)
        batcher, running = await busy(runner, pipeline_depth=1)
        deadline = time.monotonic() + 0.05  # admitted: 18 ms of work is ahead of it
        expired = batcher.submit(request(2, 1), deadline=deadline)
        cancelled = batcher.submit(request(3, 1))
        alive = batcher.submit(request(4, 1), deadline=time.monotonic() + 60)
        cancelled.cancel()
        while time.monotonic() < deadline:  # the device stays busy until it has expired
            await asyncio.sleep(deadline - time.monotonic())
        runner.gate.set()
        await running
        with pytest.raises(DeadlineExceeded, match="not computed"):
            await expired
        np.testing.assert_allclose((await alive).scores, expected(4, 1))
        assert sorted(sum(runner.batches, [])) == [1, 4]
        dropped = batcher.metrics.dropped
        assert dropped.labels("expired")._value.get() == 1
        assert dropped.labels("cancelled")._value.get() == 1
        await batcher.stop()

    asyncio.run(main())


def test_a_failing_batch_fails_only_its_requests():
    async def main():
        runner = FakeRunner(poison=13)
        batcher = make(runner)
        with pytest.raises(RuntimeError, match="poisoned"):
            await batcher.submit(request(13, 2))
        np.testing.assert_allclose((await batcher.submit(request(14, 2))).scores, expected(14, 2))
        await batcher.stop()

    asyncio.run(main())


class GatheringRunner(FakeRunner):
    """A runner with host-placed tables: `gather` runs on the batcher's gather thread, then
    `run` on the device thread; the gather of a batch holding user `broken` fails."""

    gathers = True

    def __init__(self, broken: int):
        super().__init__()
        self.broken = broken
        self.gathered: list[tuple[list[int], str]] = []  # users of each gather, its thread

    def gather(self, packed):
        users = [int(p.request.user_rows[0]) for p in packed.pieces]
        self.gathered.append((users, threading.current_thread().name))
        if self.broken in users:
            raise OSError("the table could not be read")
        return replace(packed, gathered=True, gathered_rows=5, gather_seconds=0.001)

    def run(self, packed, wanted=None):
        if not packed.gathered:  # as the real runner: gather here, where a failure fails
            self.gather(packed)
        return super().run(packed, wanted)


def test_a_failed_gather_fails_its_batch_in_run_and_the_rest_are_gathered_first():
    async def main():
        runner = GatheringRunner(broken=13)
        batcher = make(runner)
        with pytest.raises(BatchFailed, match="could not be read"):
            await batcher.submit(request(13, 2))
        # The failed batch reached `run` (where the real runner releases what it holds).
        assert runner.batches == [] and runner.gathered[-1][0] == [13]
        np.testing.assert_allclose((await batcher.submit(request(14, 2))).scores, expected(14, 2))
        assert runner.batches == [[14]]
        assert [t.startswith("gather") for _, t in runner.gathered] == [True, False, True]
        samples = {s.name: s.value for m in batcher.metrics.registry.collect() for s in m.samples}
        assert samples["phoenix_table_rows_gathered_count"] == 1  # the good batch's
        assert samples["phoenix_table_rows_gathered_sum"] == 5
        await batcher.stop()

    asyncio.run(main())


def test_close_refuses_new_work_and_drain_waits_for_accepted():
    async def main():
        runner = FakeRunner(gated=True)
        batcher = make(runner)
        accepted = [batcher.submit(request(u, 9)) for u in (1, 2, 3)]
        batcher.close()
        with pytest.raises(ShuttingDown):
            batcher.submit(request(4, 1))
        assert not await batcher.drain(0.01)  # the device is still held
        runner.gate.set()
        assert await batcher.drain(10)
        for u, f in zip((1, 2, 3), accepted, strict=True):
            np.testing.assert_allclose(f.result().scores, expected(u, 9))
        await batcher.stop()

    asyncio.run(main())


def test_no_candidates_resolves_immediately():
    async def main():
        runner = FakeRunner(gated=True)
        batcher = make(runner)
        assert (await batcher.submit(request(1, 0))).scores.shape == (0, A)
        assert runner.batches == []
        runner.gate.set()
        await batcher.stop()

    asyncio.run(main())


def test_batches_respect_the_candidate_budget():
    async def main():
        # 8 rows of 8 candidates would be 64 slots; the budget allows 32.
        runner = FakeRunner(BucketPlan((1, 2, 4, 8), (4,), (4, 8), 32), gated=True)
        batcher = make(runner, max_batch_wait_ms=50)
        first = batcher.submit(request(1, 8))
        await wait_started(runner)
        futures = [batcher.submit(request(u, 8)) for u in range(2, 10)]
        runner.gate.set()
        await asyncio.gather(first, *futures)
        assert max(len(b) for b in runner.batches) == 4
        await batcher.stop()

    asyncio.run(main())


def test_an_idle_device_takes_a_lone_request_at_once():
    async def main():
        runner = FakeRunner()
        batcher = make(runner, max_batch_wait_ms=60_000)
        # With the device idle, nothing is worth waiting for: no minute-long batching delay.
        logits = await asyncio.wait_for(batcher.submit(request(1, 3)), timeout=10)
        np.testing.assert_allclose(logits.scores, expected(1, 3))
        await batcher.stop()

    asyncio.run(main())


def test_a_small_window_does_not_ride_in_a_row_padded_for_a_big_one():
    async def main():
        runner = FakeRunner(BucketPlan((1, 2, 4, 8), (4,), (4, 64), 256), gated=True)
        batcher, first = await busy(runner, max_batch_wait_ms=50)
        big, small, small2 = (batcher.submit(request(2, 64)), batcher.submit(request(3, 1)),
                              batcher.submit(request(4, 1)))  # fmt: skip
        runner.gate.set()
        await asyncio.gather(first, big, small, small2)
        # [2] alone (one row of 64); [3, 4] together (rows of 4): not [2, 3, 4] in rows of 64.
        assert runner.batches == [[1], [2], [3, 4]]
        await batcher.stop()

    asyncio.run(main())


def test_a_large_request_runs_in_slices_with_small_ones_between():
    """While others wait, a batch holds at most max_batch_ms of work; the rest of a large
    request moves behind the requests queued meanwhile."""

    async def main():
        runner = FakeRunner(gated=True, plan=BucketPlan((1, 2, 4, 8), (4,), (4,), 64))
        # A row is 9 units = 9 ms to the fake device: a cap of 20 ms is two rows a batch.
        batcher, first = await busy(runner, pipeline_depth=1, max_batch_ms=20)
        big = batcher.submit(request(2, 24))  # six windows of 4
        small = [batcher.submit(request(u, 2)) for u in (3, 4)]
        runner.gate.set()
        await asyncio.gather(first, big, *small)
        np.testing.assert_allclose((await big).scores, expected(2, 24))
        order = runner.batches[1:]
        assert order[0] == [2, 2]  # a slice of the large request first (it came first)
        assert order[1] == [3, 4]  # then the small requests, not the rest of it
        assert order[2:] == [[2, 2, 2, 2]]  # alone in the queue: the rest in one batch
        await batcher.stop()

    asyncio.run(main())


def test_cancelled_requests_free_their_queue_space_at_once():
    async def main():
        runner = FakeRunner(gated=True)
        batcher, first = await busy(runner, max_queue=4, pipeline_depth=1)
        for u in range(2, 6):
            batcher.submit(request(u, 1)).cancel()  # callers gave up while queued
        await asyncio.sleep(0)  # let the futures' done-callbacks run
        assert batcher.queued_requests == 0
        accepted = batcher.submit(request(9, 1))  # not QueueFull: the queue holds only the dead
        runner.gate.set()
        await asyncio.gather(first, accepted)
        assert sorted(sum(runner.batches, [])) == [1, 9]
        await batcher.stop()

    asyncio.run(main())


@pytest.mark.parametrize("ticks", [0, 1, 2, 3])
def test_stop_is_not_lost_when_a_wakeup_races_it(ticks):
    """asyncio.wait_for on Python 3.11 can swallow a cancel; stop() must still end the task."""

    async def main():
        runner = FakeRunner(gated=True)
        batcher, first = await busy(runner, max_batch_wait_ms=10_000)
        batcher.submit(request(2, 1)).cancel()  # the loop now waits, with a batch in flight
        await asyncio.sleep(0)
        batcher._wakeup.set()
        for _ in range(ticks):
            await asyncio.sleep(0)
        runner.gate.set()
        await asyncio.wait_for(batcher.stop(), timeout=10)
        assert batcher._task.done()
        await first

    asyncio.run(main())


def test_a_dead_batching_task_fails_waiters_and_refuses_work():
    async def main():
        runner = FakeRunner(gated=True)
        batcher, first = await busy(runner, pipeline_depth=1)
        waiting = batcher.submit(request(2, 1))
        batcher._task.cancel()  # stands in for any way the task could end
        with pytest.raises(ShuttingDown):
            await waiting
        with pytest.raises(ShuttingDown):
            batcher.submit(request(3, 1))
        runner.gate.set()
        await first
        await batcher.stop()

    asyncio.run(main())


def test_batches_are_cut_back_rather_than_padded_with_whole_rows():
    async def main():
        runner = FakeRunner(BucketPlan((1, 2, 4, 8), (4,), (4,), 64), gated=True)
        batcher, first = await busy(runner, max_batch_wait_ms=50)
        three_windows = batcher.submit(request(2, 12))  # would be 3 rows padded to 4
        runner.gate.set()
        np.testing.assert_allclose((await three_windows).scores, expected(2, 12))
        await first
        assert runner.batches == [[1], [2, 2], [2]]
        await batcher.stop()

    asyncio.run(main())


def test_a_queue_of_only_dead_requests_leaves_the_loop_idle():
    async def main():
        runner = FakeRunner(gated=True)
        batcher, first = await busy(runner, pipeline_depth=2)
        dead = [batcher.submit(request(u, 1)) for u in (2, 3)]
        for f in dead:
            f.cancel()
        # If the batching task spun on the dead pieces it would never yield, and this
        # coroutine (on the same loop) could not resume.
        await asyncio.wait_for(asyncio.sleep(0.01), timeout=5)
        runner.gate.set()
        await first
        assert sorted(sum(runner.batches, [])) == [1]
        await batcher.stop()

    # Run the loop in a thread: a spinning batcher would hang asyncio.run, not fail it.
    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the batching task spun on dead pieces without yielding"


def test_the_queue_is_bounded_by_work_not_by_count():
    async def main():
        runner = FakeRunner(gated=True)
        # Rows of 1 + 4 + 4 = 9 tokens at 1 ms a token: 9 ms each; the bound is 30 ms.
        batcher, running = await busy(runner, max_queue_ms=30, pipeline_depth=1)
        queued = [batcher.submit(request(u, 4)) for u in (2, 3, 4)]  # 27 ms of work
        with pytest.raises(QueueFull) as refused:
            batcher.submit(request(5, 4))
        # Fitting 9 more ms into 30 needs 6 ms of the queue worked off, after the 9 ms batch
        # on the device: the hint says so.
        assert refused.value.retry_after_ms == 9 + 6
        assert batcher.metrics.refused.labels("queue_full")._value.get() == 1
        runner.gate.set()
        await asyncio.gather(running, *queued)
        assert 5 not in sum(runner.batches, [])
        # An empty queue takes a request of any size.
        assert len((await batcher.submit(request(6, 64))).scores) == 64
        await batcher.stop()

    asyncio.run(main())


def test_a_request_that_cannot_meet_its_deadline_is_refused_uncomputed():
    async def main():
        runner = FakeRunner(gated=True)
        batcher, running = await busy(runner, pipeline_depth=1)
        queued = [batcher.submit(request(u, 4)) for u in (2, 3)]  # 9 + 18 ms ahead
        with pytest.raises(DeadlineExceeded, match="cannot finish before the deadline"):
            batcher.submit(request(4, 4), deadline=time.monotonic() + 0.030)
        with pytest.raises(DeadlineExceeded, match="already passed"):
            batcher.submit(request(5, 4), deadline=time.monotonic() - 0.001)
        late_enough = batcher.submit(request(6, 4), deadline=time.monotonic() + 10)
        assert batcher.metrics.refused.labels("deadline")._value.get() == 2
        runner.gate.set()
        await asyncio.gather(running, *queued, late_enough)
        computed = sum(runner.batches, [])
        assert 4 not in computed and 5 not in computed and 6 in computed
        await batcher.stop()

    asyncio.run(main())


def test_an_idle_server_drops_an_expired_request_before_compute():
    async def main():
        runner = FakeRunner()
        batcher = make(runner)
        with pytest.raises(DeadlineExceeded):
            batcher.submit(request(7, 4), deadline=time.monotonic())
        assert runner.batches == []
        await batcher.stop()

    asyncio.run(main())


def test_the_device_rate_follows_measured_batches():
    async def main():
        runner = FakeRunner()
        batcher = make(runner)
        before = batcher.rate.seconds_per_unit
        for u in range(20):
            await batcher.submit(request(u + 1, 4))
        # The fake device is far faster than 1 ms a token: the estimate comes down.
        assert batcher.rate.seconds_per_unit < before / 2
        await batcher.stop()

    asyncio.run(main())


def test_row_buckets_must_start_at_one():
    # Issue 12, defect 7: such a plan was accepted and could freeze the event loop.
    with pytest.raises(ValueError, match="row_buckets must start at 1"):
        BucketPlan((2, 4), (4,), (4, 8), 64)


def test_a_request_no_batch_takes_fails_instead_of_freezing_the_loop(monkeypatch):
    # Whatever makes batch formation take nothing must not make the batching task spin
    # without awaiting (which froze the event loop): the head request fails, the loop goes on.
    import server.scheduling.batcher as batcher_module

    real = batcher_module.next_batch_size

    def refuses_single_candidate_windows(pieces, plan, max_units=None):
        pieces = list(pieces)
        return 0 if pieces and pieces[0][1] == 1 else real(pieces, plan, max_units)

    monkeypatch.setattr(batcher_module, "next_batch_size", refuses_single_candidate_windows)
    outcome = {}

    async def main():
        batcher = make(FakeRunner())
        stuck = batcher.submit(request(1, 1))
        with pytest.raises(RuntimeError, match="fits no batch"):
            await asyncio.wait_for(stuck, 5)
        np.testing.assert_allclose((await batcher.submit(request(2, 3))).scores, expected(2, 3))
        await batcher.stop()
        outcome["ok"] = True

    # In a thread, so that a frozen event loop fails the test instead of hanging it.
    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the event loop froze"
    assert outcome.get("ok")


class CheckingRunner(FakeRunner):
    """A fake that asks `wanted()` before its one device call, as the real runner does before
    each, and scores NaN for the users in `nan_users` (a model gone bad for some rows)."""

    def __init__(self, nan_users=(), **kw):
        super().__init__(**kw)
        self.nan_users = set(nan_users)

    def run(self, packed, wanted=None):
        from server.scheduling.batch_result import Scores, Unwanted

        self.started.set()
        self.gate.wait(10)
        if wanted is not None and not wanted():
            raise Unwanted("nobody waits")
        out = super().run(packed)
        for r, p in enumerate(packed.pieces):
            if int(p.request.user_rows[0]) in self.nan_users:
                out[r, 0, 3] = np.nan
        return Scores(out, np.isfinite(out).all(axis=-1))


def test_non_finite_scores_fail_their_requests_data_loss_and_report_the_version():
    from server.errors import DataLoss

    async def main():
        runner = CheckingRunner(nan_users={2})
        batcher = make(runner, max_batch_wait_ms=50)
        reported = []
        batcher.on_non_finite = reported.append
        results = await asyncio.gather(
            *(batcher.submit(request(u, 3)) for u in (1, 2, 3)), return_exceptions=True
        )
        assert isinstance(results[1], DataLoss) and "non-finite" in str(results[1])
        np.testing.assert_allclose(results[0].scores, expected(1, 3))
        np.testing.assert_allclose(results[2].scores, expected(3, 3))
        assert reported == [None]  # the fake's version
        assert batcher.metrics.non_finite_batches._value.get() == 1
        await batcher.stop()

    asyncio.run(main())


def test_a_batch_nobody_waits_for_any_more_is_not_run():
    async def main():
        runner = CheckingRunner(gated=True)
        batcher, running = await busy(runner, pipeline_depth=2)
        late = batcher.submit(request(2, 1))
        while batcher.queued_requests:  # packed and handed to the device thread, behind 1
            await asyncio.sleep(0.001)
        late.cancel()
        runner.gate.set()
        await running
        while not batcher.metrics.batches_unwanted._value.get():
            await asyncio.sleep(0.001)
        assert 2 not in sum(runner.batches, [])  # never scored
        await batcher.stop()

    asyncio.run(main())


def test_a_withdrawn_version_refuses_new_requests_and_drops_queued_ones():
    from server.errors import Withdrawn

    class Version:
        version, withdrawn = "7", None

    async def main():
        runner = CheckingRunner(gated=True)
        runner.model = Version()
        batcher, running = await busy(runner, pipeline_depth=1)
        queued = batcher.submit(request(2, 1))
        Version.withdrawn = "its file changed"
        with pytest.raises(Withdrawn, match="its file changed"):
            batcher.submit(request(3, 1))
        runner.gate.set()
        with pytest.raises(Withdrawn):
            await queued
        assert batcher.metrics.dropped.labels("withdrawn")._value.get() == 1
        await running  # the batch already on the device finishes
        await batcher.stop()

    asyncio.run(main())
