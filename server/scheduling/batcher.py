"""Dynamic batching of concurrent ranking requests onto one device.

Concurrency design, step by step (everything except step 4 runs on the asyncio event loop, so
the batcher's own state needs no locks; gRPC's handler threads only call `precheck` and
`retry_hint_ms`, which read it, and reach `submit` through the loop):

1. `submit` (called on the loop for a gRPC handler, with an already validated, hashed request) splits the
   request's candidates into windows (`plan.window_for`: the bucket that scores it in the fewest
   padded tokens), prices them in work units (`BatchShape.row_units`) and asks the admission policy
   (`server.scheduling.admission.decide`) whether the queue can take that much more work before the
   request's deadline. Refused, it raises at once (`QueueFull` with a retry hint computed from
   the queue, or `DeadlineExceeded`); after `close()` it raises `ShuttingDown`. Admitted, its
   pieces join one FIFO deque and it returns a future of the request's scores.
2. One batching task waits for the first piece. If the device is idle it dispatches at once
   (a lone request never waits for company). Otherwise the request would wait for the device
   anyway, so the batch stays open, collecting arrivals, until it is full (`plan.max_rows`
   rows or `plan.max_batch_candidates` candidate slots), the device goes idle, or
   `max_batch_wait_ms` has passed since its first piece arrived, whichever comes first.
3. It then takes as many live pieces, in FIFO order, as the pure policy
   `server.scheduling.composition.next_batch_size` decides (they fit a planned shape, none is mostly
   padding, no whole rows of padding), dropping pieces of requests that were cancelled (their
   call ended: the handler cancels the future) or whose deadline has passed (their future
   fails with `DeadlineExceeded`), before any compute, counted in
   `phoenix_queue_dropped_total`, and pads them on the host (`runner.pack`).
   Large requests do not stall small ones: while other requests wait, a batch holds at most
   `max_batch_ms` of estimated device time, and when it took only part of a request, that
   request's other pieces move behind the requests queued meanwhile (`_yield_rest`). A
   2,800-candidate request thus runs as slices of a few chunks, each followed by the small
   requests that arrived during it; a small request waits for at most one slice, not for the
   whole of it. Alone in the queue, a request runs in whole batches.
4. The packed batch goes to a single device thread (`runner.run`), so the event loop never
   blocks on the device. At most `pipeline_depth` batches are in flight: while the device
   computes batch N, step 2-3 form and pad batch N+1 (and handlers validate and hash new
   requests), so host work overlaps device work. The slot is taken before a batch is formed,
   so under load the next batch is formed only when it can run soon, and it is full.
5. When a batch's scores come back (on the loop), each row's scores are copied into its
   request's result buffer; a request's future resolves when its last piece lands, with the
   model version that scored it. A failed batch fails exactly the requests in it; the loop
   carries on.

Model versions (server.engine.reload): a batch is packed for one version, `runner.model` when it is
formed, and a request is pinned to the version of its first batch; its later windows only
join batches of that version, so after a swap the requests already started finish on the old
version, in batches of their own.
6. `close()` stops accepting; `drain(timeout)` waits until every accepted request has been
   resolved, so shutdown never loses or strands an accepted request.

Bookkeeping: a request counts toward `max_queue` (and the `phoenix_queue_depth` gauge) from
`submit` until its last piece is dispatched or its future resolves, whichever is first, so
cancelled or expired requests stop taking queue space at once even though their pieces are only
swept from the deque when batch formation reaches them. If the batching task ever dies, every
waiting request fails and `submit` refuses new ones, rather than hanging.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter

from model.config import PhoenixModelConfig
from request.encoding import EncodedRequest
from request.layout import Piece, windows
from server.config import BatcherConfig
from server.errors import (
    DataLoss,
    DeadlineExceeded,
    QueueFull,
    ServiceError,
    ShuttingDown,
    Withdrawn,
)
from server.operations.metrics import Metrics
from server.scheduling.admission import DeviceRate, Refusal, decide, fullness_s, retry_hint_ms
from server.scheduling.batch_result import Scored, Scores, Unwanted
from server.scheduling.buckets import BucketPlan
from server.scheduling.composition import next_batch_size

log = logging.getLogger(__name__)

# Weight of the newest admitted request in the typical request's work (a mean over roughly
# the last 1 / TYPICAL_WEIGHT requests).
TYPICAL_WEIGHT = 0.05


class Runner(Protocol):
    """What the batcher needs from a model runner (see server.engine.runner.ModelRunner)."""

    config: PhoenixModelConfig
    plan: BucketPlan
    seconds_per_unit: float  # device seconds per work unit, as measured at warm-up
    score_width: int  # W: scores per candidate that `run` returns
    model: Any  # the serving version (has .version); replaced between batches on reload

    def pack(self, pieces: Sequence[Piece], model: Any):
        """-> PackedBatch with .shape, .pieces, .model (scored by `model`) and .work_units
        (`shape.rows x shape.row_units`)."""
        ...

    def run(self, packed, wanted: Callable[[], bool]):
        """-> `Scores` ([B, C, W] and whether each candidate's are finite), or a bare
        float32 [B, C, W]; raises `Unwanted` when `wanted()` turns False between device calls."""
        ...

    # Optional (host-placed tables): `gathers` True, and `gather(packed)` -> the packed batch
    # with its table rows gathered (.gathered_rows, .gather_seconds), run before `run`.


class BatchFailed(RuntimeError):
    """The batch holding this request failed (the cause is chained); other batches go on."""


@dataclass(eq=False)
class _Request:
    encoded: EncodedRequest
    deadline: float | None  # time.monotonic() seconds, or None
    future: asyncio.Future
    scores: np.ndarray | None  # float32 [m, W], filled piece by piece (allocated at the first)
    pieces_left: int  # pieces whose logits have not landed
    enqueued_at: float
    queued_pieces: int  # pieces still in the deque
    queued_candidates: int  # their candidates
    queued_units: int  # their work units (1 + S + C per piece, of its own bucket)
    counted: bool = True  # still counted in the queue totals
    started: bool = False
    dropped: bool = False  # its pieces were dropped unrun (counted once)
    model: Any = None  # the version its first window was packed for; the rest follow it

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(eq=False)
class _QueuedPiece:
    request: _Request
    start: int
    stop: int
    units: int  # work units of this piece alone: 1 + history bucket + candidate bucket


class Batcher:
    def __init__(self, runner: Runner, config: BatcherConfig, metrics: Metrics):
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self._pieces: collections.deque[_QueuedPiece] = collections.deque()
        # Totals over counted requests (see "Bookkeeping" above).
        self._queued_requests = 0
        self._queued_pieces = 0
        self._queued_candidates = 0
        self._queued_units = 0
        self._in_flight_units = 0  # work units of the batches on the device
        self._typical_units = 0.0  # mean work of recent admitted requests (precheck prices by it)
        self._peak_work = 0.0
        self.rate = DeviceRate(runner.seconds_per_unit)
        metrics.queue_work_limit.set(config.max_queue_ms / 1000)
        self._wakeup = asyncio.Event()  # a piece arrived or a batch finished
        self._in_flight = 0  # batches handed to the device thread and not finished
        self._slots = asyncio.Semaphore(config.pipeline_depth)
        self._device = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="device")
        self._gather = None  # host-placed tables: the thread gathering each batch's rows
        if getattr(runner, "gathers", False):
            self._gather = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gather")
        self._accepting = True
        self._broken: BaseException | None = None  # why the batching task died, if it did
        self._outstanding = 0  # accepted requests not yet resolved
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        # Called (on the loop) with the version whose batch scored non-finite values.
        self.on_non_finite: Callable[[Any], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")
        self._task.add_done_callback(self._loop_ended)

    def close(self) -> None:
        """Stop accepting requests; those already accepted still complete."""
        self._accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted request is resolved; False if `timeout` ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self, wait_for_device: bool = True) -> None:
        """Cancel the batching task and release the device thread (after drain)."""
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if self._gather is not None:
            self._gather.shutdown(wait=wait_for_device, cancel_futures=True)
        self._device.shutdown(wait=wait_for_device, cancel_futures=True)

    @property
    def broken(self) -> BaseException | None:
        """Why the batching task died (None while it runs, and after a clean stop)."""
        return None if isinstance(self._broken, ShuttingDown) else self._broken

    @property
    def queued_requests(self) -> int:
        return self._queued_requests

    # -- submission ----------------------------------------------------------------------

    def precheck(self, deadline: float | None = None) -> None:
        """Refuse at once, before the request is even received and decoded, what the queue
        would refuse: a typical request (the recent requests' mean work, `TYPICAL_WEIGHT`)
        would not fit before its deadline, or not within the queue's bound. Under overload
        the queue stays just below its bound, so pricing the request at nothing would let
        almost every call through to be decoded and only then refused. Raises like `submit`.
        Any thread: it only reads the queue's totals (a read racing a change refuses or admits
        a moment early; `submit`, on the loop, decides on the request's own work)."""
        self._admit(round(self._typical_units), deadline, time.monotonic())

    def retry_hint_ms(self) -> int:
        """When a call refused at the transport might find room, in ms (any thread; what
        transport refusals tell clients): with the queue full, the wait until a typical
        request fits (`server.scheduling.admission.decide`'s hint); else the wait for the work queued and
        running and its own (the transport was full of calls, not of work). At least
        `MIN_RETRY_MS`."""
        now = time.monotonic()
        refusal = self._refusal(round(self._typical_units), None, now)
        if refusal is not None and refusal.retry_after_ms is not None:
            return refusal.retry_after_ms
        units = self._queued_units + self._in_flight_units + round(self._typical_units)
        return retry_hint_ms(self.rate.seconds(units))

    def fullness_s(self) -> float:
        """For which calls the queue is full now: a typical request with less than this many
        seconds to its deadline would be refused for want of room (0: none; inf: all;
        `server.scheduling.admission.fullness_s`). Any thread: it only reads. The transport's door
        refuses scoring calls by it before they reach a handler (`server.door.call_limits.Door`);
        not counted here (the door counts)."""
        if self._broken is not None or not self._accepting:
            return 0.0  # the handler says why, with its own status
        c = self.config
        return fullness_s(self.rate.seconds(round(self._typical_units)),
                          self.rate.seconds(self._queued_units), self._queued_requests,
                          c.max_queue_ms / 1000, c.max_queue, c.queue_deadline_share)  # fmt: skip

    def door(self) -> tuple[float, int]:
        """What a frontend worker's door needs to know of the queue (sent with each answer):
        `fullness_s`, and the retry hint in ms. Not counted as a refusal."""
        return self.fullness_s(), self.retry_hint_ms()

    def _refusal(self, units: int, deadline: float | None, now: float) -> Refusal | None:
        c = self.config
        return decide(
            own_s=self.rate.seconds(units),
            queued_s=self.rate.seconds(self._queued_units),
            in_flight_s=self.rate.seconds(self._in_flight_units),
            queued_requests=self._queued_requests,
            remaining_s=None if deadline is None else deadline - now,
            max_queue_s=c.max_queue_ms / 1000,
            max_queue=c.max_queue,
            deadline_share=c.queue_deadline_share,
        )

    def _admit(self, units: int, deadline: float | None, now: float) -> None:
        if self._broken is not None:
            raise ShuttingDown(f"batcher stopped after an internal error: {self._broken!r}")
        if not self._accepting:
            raise ShuttingDown("server is shutting down; retry on another replica")
        reason = _withdrawn(self.runner.model)
        if reason is not None:
            raise Withdrawn(reason)
        refusal = self._refusal(units, deadline, now)
        if refusal is not None:
            self.metrics.refused.labels(refusal.reason).inc()
            if refusal.retry_after_ms is None:
                raise DeadlineExceeded(refusal.message)
            raise QueueFull(refusal.message, refusal.retry_after_ms)

    def submit(self, encoded: EncodedRequest, deadline: float | None = None) -> asyncio.Future:
        """Queue a request; the future resolves to its `Scored`: float32 scores [m, W] in
        request order (W = `runner.score_width`) and the version that scored them."""
        plan, now = self.runner.plan, time.monotonic()
        m, n = encoded.num_candidates, encoded.num_history
        spans = windows(m, plan.window_for(m, n))
        units = [plan.shape_for(1, n, stop - start).row_units for start, stop in spans]
        self._admit(sum(units), deadline, now)
        self._typical_units += TYPICAL_WEIGHT * (sum(units) - self._typical_units)
        request = _Request(
            encoded=encoded,
            deadline=deadline,
            future=asyncio.get_running_loop().create_future(),
            scores=None,
            pieces_left=len(spans),
            enqueued_at=now,
            queued_pieces=len(spans),
            queued_candidates=m,
            queued_units=sum(units),
        )
        if not spans:
            empty = np.zeros((0, self.runner.score_width), np.float32)
            request.future.set_result(Scored(empty, _version(self.runner.model)))
            return request.future
        self._pieces.extend(
            _QueuedPiece(request, start, stop, t)
            for (start, stop), t in zip(spans, units, strict=True)
        )
        self._queued_requests += 1
        self._queued_pieces += len(spans)
        self._queued_candidates += m
        self._queued_units += request.queued_units
        self._observe_queue()
        self._outstanding += 1
        self._idle.clear()
        request.future.add_done_callback(lambda _, r=request: self._resolved(r))
        self._wakeup.set()
        return request.future

    def _uncount(self, request: _Request) -> None:
        """Remove a request from the queue totals (once)."""
        if request.counted:
            request.counted = False
            self._queued_requests -= 1
            self._queued_pieces -= request.queued_pieces
            self._queued_candidates -= request.queued_candidates
            self._queued_units -= request.queued_units
            self._observe_queue()

    def _observe_queue(self) -> None:
        work = self.rate.seconds(self._queued_units)
        self.metrics.queue_depth.set(self._queued_requests)
        self.metrics.queue_work.set(work)
        if work > self._peak_work:
            self._peak_work = work
            self.metrics.queue_work_peak.set(work)

    def _resolved(self, request: _Request) -> None:
        self._uncount(request)  # cancelled or failed while queued: free its queue space now
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    # -- batch formation -----------------------------------------------------------------

    def _full(self) -> bool:
        plan = self.runner.plan
        return (
            self._queued_pieces >= plan.max_rows
            or self._queued_candidates >= plan.max_batch_candidates
        )

    async def _wait_for_batch(self) -> None:
        """Return once there is live work and the batch should close (see step 2 above)."""
        while not self._sweep_front(time.monotonic()):
            self._wakeup.clear()
            await self._wakeup.wait()
        close_at = self._pieces[0].request.enqueued_at + self.config.max_batch_wait_ms / 1000
        while self._in_flight and not self._full():
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stop() sends, which would leave this task running forever.
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _pop(self) -> _QueuedPiece:
        piece = self._pieces.popleft()
        request, size = piece.request, piece.stop - piece.start
        request.queued_pieces -= 1
        request.queued_candidates -= size
        request.queued_units -= piece.units
        if request.counted:
            self._queued_pieces -= 1
            self._queued_candidates -= size
            self._queued_units -= piece.units
            if request.queued_pieces == 0:
                self._uncount(request)
        return piece

    def _sweep_front(self, now: float) -> bool:
        """Drop dead pieces from the head of the queue; True if a live piece remains."""
        while self._pieces:
            request = self._pieces[0].request
            if request.future.done():  # cancelled (the call ended), or already failed
                self._pop()
                if request.future.cancelled():
                    self._dropped(request, "cancelled")
            elif request.expired(now):
                self._pop()
                self._dropped(request, "expired")
                request.future.set_exception(
                    DeadlineExceeded("deadline expired while queued; not computed")
                )
            elif (reason := _withdrawn(request.model or self.runner.model)) is not None:
                self._pop()
                self._dropped(request, "withdrawn")
                request.future.set_exception(Withdrawn(reason))
            else:
                return True
        return False

    def _dropped(self, request: _Request, reason: str) -> None:
        """Count, once, a request whose pieces are dropped before they run."""
        if not request.dropped:
            request.dropped = True
            self.metrics.dropped.labels(reason).inc()

    def _take_batch(self, taken: list[_QueuedPiece]) -> Any:
        """Pop live pieces into `taken`, in FIFO order, while they fit (step 3 above);
        returns the model version that scores them.

        A request is scored by one version: its windows follow the version its first window
        was packed for. Only the head request can be part-dispatched (pieces leave in FIFO
        order), so after a swap at most one batch holds the rest of a request on the old
        version, alone; every other batch takes the serving version."""
        now = time.monotonic()
        count = self._batch_size(now)
        model = None
        while len(taken) < count and self._sweep_front(now):
            wants = self._pieces[0].request.model or self.runner.model
            if taken and wants is not model:
                break
            model = wants
            taken.append(self._pop())
        if taken:
            self._yield_rest(taken[-1].request)
        return model

    def _batch_size(self, now: float) -> int:
        """How many of the live pieces at the head of the queue the next batch takes: within
        `max_batch_ms` of estimated device time while other requests wait (step 3)."""
        live = (
            (p.request.encoded.num_history, p.stop - p.start)
            for p in self._pieces
            if not (p.request.future.done() or p.request.expired(now))
        )
        max_units = None
        if self._queued_requests > 1:
            max_units = self.config.max_batch_ms / 1000 / self.rate.seconds_per_unit
        return next_batch_size(live, self.runner.plan, max_units)

    def _yield_rest(self, request: _Request) -> None:
        """If a batch took only part of `request` and other requests wait, move its other
        pieces behind them: a large request runs in slices, each followed by what arrived
        meanwhile, so small requests never wait behind all of it (step 3)."""
        rest = []
        while self._pieces and self._pieces[0].request is request:
            rest.append(self._pieces.popleft())
        if self._pieces:
            self._pieces.extend(rest)
        else:
            self._pieces.extendleft(reversed(rest))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            taken: list[_QueuedPiece] = []
            dispatched = False
            try:
                await self._wait_for_batch()
                model = self._take_batch(taken)
                if not taken:  # live work that no batch takes: never spin on it
                    self._fail_head(RuntimeError("the request's head window fits no batch"))
                if taken:
                    packed = self.runner.pack(
                        [Piece(p.request.encoded, p.start, p.stop) for p in taken], model
                    )
                    for p in taken:
                        p.request.model = p.request.model or model
                    self._observe_dispatch(taken, packed)
                    wanted = _wanted([p.request for p in taken], self.metrics.device_calls)
                    if self._gather is None:
                        result = loop.run_in_executor(self._device, self._run_timed, packed,
                                                      wanted)  # fmt: skip
                    else:
                        result = loop.create_task(self._gather_and_run(packed, wanted))
                    self._in_flight += 1
                    units = packed.work_units
                    self._in_flight_units += units
                    dispatched = True
                    result.add_done_callback(lambda f, t=taken, k=units: self._complete(f, t, k))
            except asyncio.CancelledError:
                self._fail(taken, ShuttingDown("server stopped before this request ran"))
                raise
            except Exception as e:  # a bug in forming a batch: fail it, keep serving
                log.exception("failed to form a batch of %d pieces", len(taken))
                if taken:
                    self._fail(taken, e)
                else:  # failing before taking anything: the head request cannot be served
                    self._fail_head(e)
            finally:
                if not dispatched:
                    self._slots.release()

    def _loop_ended(self, task: asyncio.Task) -> None:
        """The batching task ended: expected on stop(); otherwise fail everything queued."""
        error = None if task.cancelled() else task.exception()
        if error is None:
            error = ShuttingDown("server stopped before this request ran")
        else:
            log.critical("the batching task died; refusing new requests", exc_info=error)
        self._broken = error
        while self._pieces:
            piece = self._pieces.popleft()
            if not piece.request.future.done():
                piece.request.future.set_exception(error)

    def _fail_head(self, error: BaseException) -> None:
        """Fail the request at the head of the queue: whatever made forming a batch fail
        without taking a piece would otherwise recur on every pass of the loop, which never
        awaits in that case and would freeze the event loop."""
        if self._sweep_front(time.monotonic()):
            log.error("failing a request no batch can take: %r", error)
            self._fail([self._pieces[0]], error)
            self._sweep_front(time.monotonic())

    def _fail(self, pieces: list[_QueuedPiece], error: BaseException) -> None:
        """Fail the requests of these pieces (service errors as they are, bugs as BatchFailed;
        a request whose deadline has passed as DeadlineExceeded, whatever the error)."""
        now = time.monotonic()
        for p in pieces:
            if p.request.future.done():
                continue
            if p.request.expired(now):
                p.request.future.set_exception(
                    DeadlineExceeded("deadline expired before this request was computed")
                )
            elif isinstance(error, ServiceError):
                p.request.future.set_exception(error)
            else:  # one exception object per request, so their tracebacks stay apart
                failure = BatchFailed(repr(error))
                failure.__cause__ = error
                p.request.future.set_exception(failure)

    def _observe_dispatch(self, taken: list[_QueuedPiece], packed) -> None:
        now = time.monotonic()
        requests = {id(p.request): p.request for p in taken}
        for request in requests.values():
            if not request.started:
                request.started = True
                self.metrics.queue_wait.observe(now - request.enqueued_at)
        shape = packed.shape
        real = sum(p.stop - p.start for p in taken)
        self.metrics.batch_size.observe(len(requests))
        self.metrics.batch_rows.observe(len(taken))
        self.metrics.batch_padding_ratio.observe(1.0 - real / (shape.rows * shape.candidates))

    async def _gather_and_run(self, packed, wanted: Callable[[], bool]) -> tuple[Any, float]:
        """Host-placed tables: gather the batch's rows on the gather thread (while the device
        runs the batch before), then run it. Both threads take batches in order, so the
        device still runs them in packing order."""
        loop = asyncio.get_running_loop()
        try:
            packed = await loop.run_in_executor(self._gather, self.runner.gather, packed)
        except Exception:  # left to `run`, which gathers again and, failing, fails the batch
            pass  # and releases the prefixes it holds, as for any failure on the device
        else:
            self.metrics.table_gather.observe(packed.gather_seconds)
            self.metrics.table_rows_gathered.observe(packed.gathered_rows)
        return await loop.run_in_executor(self._device, self._run_timed, packed, wanted)

    def _run_timed(self, packed, wanted: Callable[[], bool]) -> tuple[Any, float]:
        """On the device thread: the batch's scores and its own device seconds (excluding
        the time it waited for the batch before it). Not run when no call wants it any more
        (`server.engine.runner.Unwanted`, checked before each of its device calls)."""
        started = time.perf_counter()
        scores = self.runner.run(packed, wanted)
        return scores, time.perf_counter() - started

    def _complete(self, result: asyncio.Future, taken: list[_QueuedPiece], units: int) -> None:
        self._slots.release()
        self._in_flight -= 1
        self._in_flight_units -= units
        self._wakeup.set()
        try:
            out, seconds = result.result()
        except Unwanted:
            self.metrics.batches_unwanted.inc()
            self._fail(taken, DeadlineExceeded("deadline expired while queued; not computed"))
            return
        except (Exception, asyncio.CancelledError) as e:
            if not isinstance(e, ServiceError):
                log.exception("batch of %d rows failed", len(taken))
            self._fail(taken, e)
            return
        self.metrics.inference.observe(seconds)
        self.rate.observe(units, seconds)
        scores, finite = _checked(out)
        bad = []
        for row, p in enumerate(taken):
            request, size = p.request, p.stop - p.start
            if request.future.done():
                continue
            if not finite[row, :size].all():
                bad.append(p)
                continue
            if request.scores is None:
                m = request.encoded.num_candidates
                request.scores = np.empty((m, self.runner.score_width), np.float32)
            request.scores[p.start : p.stop] = scores[row, :size]
            request.pieces_left -= 1
            if request.pieces_left == 0:
                self.metrics.candidates_scored.inc(len(request.scores))
                request.future.set_result(Scored(request.scores, _version(request.model)))
        if bad:
            self._non_finite(bad)

    def _non_finite(self, pieces: list[_QueuedPiece]) -> None:
        """Scores of these pieces came back non-finite: their requests fail DATA_LOSS (never
        OK), and the version is reported (`on_non_finite`: repeated failures withdraw it)."""
        model = pieces[0].request.model
        version = _version(model)
        self.metrics.non_finite_batches.inc()
        log.error("model version %s scored non-finite values for %d requests; answered DATA_LOSS",
                  version, len({id(p.request) for p in pieces}),
                  extra={"fields": {"event": "non_finite", "version": version}})  # fmt: skip
        self._fail(pieces, DataLoss(f"model version {version} scored non-finite values for this "
                                    "request; it was not answered"))  # fmt: skip
        if self.on_non_finite is not None:
            self.on_non_finite(model)


def _version(model: Any) -> str:
    return "" if model is None else model.version


def _withdrawn(model: Any) -> str | None:
    """Why `model` may not serve (`server.engine.versions.ServedModel.withdrawn`), or None."""
    return getattr(model, "withdrawn", None)


def _wanted(requests: list[_Request], started: Counter) -> Callable[[], bool]:
    """Asked before each device call of a batch: whether any of its requests still waits for
    it (any thread: it only reads); each yes counts a device call `started`."""
    unique = list({id(r): r for r in requests}.values())

    def wanted() -> bool:
        now = time.monotonic()
        if any(not (r.future.done() or r.expired(now)) for r in unique):
            started.inc()
            return True
        return False

    return wanted


def _checked(out: Any) -> tuple[np.ndarray, np.ndarray]:
    """A runner's output as (scores float32 [B, C, W], finite bool [B, C]): `Scores` carry
    the device's own check; a bare array (a runner without one) is checked here."""
    if isinstance(out, Scores):
        return out.values, out.finite
    scores = np.asarray(out)
    return scores, np.isfinite(scores).all(axis=-1)
