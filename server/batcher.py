"""Dynamic batching of concurrent ranking requests onto one device.

Concurrency design, step by step (everything except step 4 runs on the asyncio event loop, so
the batcher's own state needs no locks):

1. `submit` (called by a gRPC handler with an already validated, hashed request) splits the
   request's candidates into windows (`plan.window_for`: the bucket that scores it in the fewest
   padded tokens) and appends them, as pieces, to one FIFO deque. If `max_queue` requests are already waiting it raises `QueueFull` at once;
   after `close()` it raises `ShuttingDown`. It returns a future of the request's logits.
2. One batching task waits for the first piece. If the device is idle it dispatches at once
   (a lone request never waits for company). Otherwise the request would wait for the device
   anyway, so the batch stays open, collecting arrivals, until it is full (`plan.max_rows`
   rows or `plan.max_batch_candidates` candidate slots), the device goes idle, or
   `max_batch_wait_ms` has passed since its first piece arrived, whichever comes first.
3. It then takes pieces in FIFO order while they fit a planned shape and cost the batch at
   most twice what they would cost alone (a 32-candidate window does not ride in a row padded
   to 1024; it starts the next batch instead), dropping pieces of
   requests that were cancelled (their future is done) or whose deadline has passed (their
   future fails with `DeadlineExceeded`, before any compute), and pads them on the host
   (`runner.pack`).
4. The packed batch goes to a single device thread (`runner.run`), so the event loop never
   blocks on the device. At most `pipeline_depth` batches are in flight: while the device
   computes batch N, step 2-3 form and pad batch N+1 (and handlers validate and hash new
   requests), so host work overlaps device work. The slot is taken before a batch is formed,
   so under load the next batch is formed only when it can run soon, and it is full.
5. When a batch's logits come back (on the loop), each row's logits are copied into its
   request's result buffer; a request's future resolves when its last piece lands. A failed
   batch fails exactly the requests in it; the loop carries on.
6. `close()` stops accepting; `drain(timeout)` waits until every accepted request has been
   resolved, so shutdown never loses or strands an accepted request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from model.config import PhoenixModelConfig
from model.features import EncodedRequest, Piece
from server.buckets import BucketPlan
from server.errors import DeadlineExceeded, QueueFull, ShuttingDown
from server.metrics import Metrics

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the batcher needs from a model runner (see server.runner.ModelRunner)."""

    config: PhoenixModelConfig
    plan: BucketPlan

    def pack(self, pieces: Sequence[Piece]):  # -> PackedBatch with .shape and .pieces
        ...

    def run(self, packed) -> np.ndarray:  # [R, C', A] logits
        ...


@dataclass(eq=False)
class _Request:
    encoded: EncodedRequest
    deadline: float | None  # time.monotonic() seconds, or None
    future: asyncio.Future
    logits: np.ndarray  # float32 [m, A], filled piece by piece
    pieces_left: int
    enqueued_at: float
    undispatched: int  # pieces still in the deque
    started: bool = False

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(eq=False)
class _QueuedPiece:
    request: _Request
    start: int
    stop: int


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_wait_ms: float = 2.0  # how long a batch stays open for more requests
    max_queue: int = 256  # requests waiting for a batch before RESOURCE_EXHAUSTED
    pipeline_depth: int = 2  # batches in flight (1 computing + 1 ready)
    retry_after_ms: int = 50  # the hint given with RESOURCE_EXHAUSTED


@dataclass(eq=False)
class _Stats:
    batches: int = 0
    outstanding: int = 0  # accepted requests not yet resolved
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Batcher:
    def __init__(self, runner: Runner, config: BatcherConfig, metrics: Metrics):
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self._pieces: collections.deque[_QueuedPiece] = collections.deque()
        self._queued_requests = 0
        self._queued_candidates = 0
        self._wakeup = asyncio.Event()  # a piece arrived or a batch finished
        self._in_flight = 0  # batches handed to the device thread and not finished
        self._slots = asyncio.Semaphore(config.pipeline_depth)
        self._device = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="device")
        self._accepting = True
        self._stats = _Stats()
        self._stats.idle.set()
        self._task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def close(self) -> None:
        """Stop accepting requests; those already accepted still complete."""
        self._accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until every accepted request is resolved; False if `timeout` ran out."""
        try:
            await asyncio.wait_for(self._stats.idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        """Cancel the batching task and release the device thread (after drain)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._device.shutdown(wait=True)

    @property
    def queued_requests(self) -> int:
        return self._queued_requests

    @property
    def batches_run(self) -> int:
        return self._stats.batches

    # -- submission ----------------------------------------------------------------------

    def submit(self, encoded: EncodedRequest, deadline: float | None = None) -> asyncio.Future:
        """Queue a request; the future resolves to float32 logits [m, A] in request order."""
        if not self._accepting:
            raise ShuttingDown("server is shutting down; retry on another replica")
        if self._queued_requests >= self.config.max_queue:
            raise QueueFull(self._queued_requests, self.config.retry_after_ms)
        loop = asyncio.get_running_loop()
        m = encoded.num_candidates
        window = self.runner.plan.window_for(m, encoded.num_history)
        spans = [(s, min(s + window, m)) for s in range(0, m, window)]
        request = _Request(
            encoded=encoded,
            deadline=deadline,
            future=loop.create_future(),
            logits=np.empty((m, self.runner.config.num_actions), np.float32),
            pieces_left=len(spans),
            enqueued_at=time.monotonic(),
            undispatched=len(spans),
        )
        if not spans:
            request.future.set_result(request.logits)
            return request.future
        for start, stop in spans:
            self._pieces.append(_QueuedPiece(request, start, stop))
        self._queued_requests += 1
        self._queued_candidates += m
        self.metrics.queue_depth.set(self._queued_requests)
        self._stats.outstanding += 1
        self._stats.idle.clear()
        request.future.add_done_callback(self._resolved)
        self._wakeup.set()
        return request.future

    def _resolved(self, _future: asyncio.Future) -> None:
        self._stats.outstanding -= 1
        if self._stats.outstanding == 0:
            self._stats.idle.set()

    # -- batch formation -----------------------------------------------------------------

    def _full(self) -> bool:
        plan = self.runner.plan
        return (
            len(self._pieces) >= plan.max_rows
            or self._queued_candidates >= plan.max_batch_candidates
        )

    async def _wait_for_batch(self) -> None:
        """Return once there is work and the batch should close (see step 2 above)."""
        while not self._pieces:
            self._wakeup.clear()
            await self._wakeup.wait()
        close_at = self._pieces[0].request.enqueued_at + self.config.max_batch_wait_ms / 1000
        while self._in_flight and not self._full():
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _pop(self) -> _QueuedPiece:
        piece = self._pieces.popleft()
        request = piece.request
        request.undispatched -= 1
        self._queued_candidates -= piece.stop - piece.start
        if request.undispatched == 0:
            self._queued_requests -= 1
        return piece

    def _take_batch(self) -> list[_QueuedPiece]:
        """Pop live pieces in FIFO order while they fit a planned shape."""
        plan = self.runner.plan
        now = time.monotonic()
        taken: list[_QueuedPiece] = []
        longest_history = longest_window = 0
        while self._pieces:
            piece = self._pieces[0]
            request = piece.request
            if request.future.done():  # cancelled by the client, or already failed
                self._pop()
                continue
            if request.expired(now):
                self._pop()
                request.future.set_exception(
                    DeadlineExceeded("deadline expired while queued; not computed")
                )
                continue
            history = max(longest_history, request.encoded.num_history)
            window = max(longest_window, piece.stop - piece.start)
            shape = plan.shape_for(len(taken) + 1, history, window)
            if shape is None:
                break
            if taken:
                before = plan.shape_for(len(taken), longest_history, longest_window)
                added = (len(taken) + 1) * shape.row_tokens - len(taken) * before.row_tokens
                alone = plan.shape_for(1, request.encoded.num_history, piece.stop - piece.start)
                if added > 2 * alone.row_tokens:
                    break  # mostly padding here: this piece starts the next batch
            longest_history, longest_window = history, window
            taken.append(self._pop())
        self.metrics.queue_depth.set(self._queued_requests)
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            taken: list[_QueuedPiece] = []
            try:
                await self._wait_for_batch()
                taken = self._take_batch()
                if not taken:
                    self._slots.release()
                    continue
                packed = self.runner.pack(
                    [Piece(p.request.encoded, p.start, p.stop) for p in taken]
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # packing bug: fail these requests, keep serving
                log.exception("failed to form a batch")
                self._slots.release()
                for p in taken:
                    if not p.request.future.done():
                        p.request.future.set_exception(e)
                continue
            self._observe_dispatch(taken, packed)
            self._in_flight += 1
            started = time.perf_counter()
            result = loop.run_in_executor(self._device, self.runner.run, packed)
            result.add_done_callback(lambda f, t=taken, s=started: self._complete(f, t, s))

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

    def _complete(self, result: asyncio.Future, taken: list[_QueuedPiece], started: float) -> None:
        self._slots.release()
        self._in_flight -= 1
        self._wakeup.set()
        self._stats.batches += 1
        try:
            logits = result.result()
        except Exception as e:
            log.exception("batch of %d rows failed on the device", len(taken))
            for p in taken:
                if not p.request.future.done():
                    p.request.future.set_exception(e)
            return
        self.metrics.inference.observe(time.perf_counter() - started)
        for row, p in enumerate(taken):
            request = p.request
            if request.future.done():
                continue
            request.logits[p.start : p.stop] = logits[row, : p.stop - p.start]
            request.pieces_left -= 1
            if request.pieces_left == 0:
                self.metrics.candidates_scored.inc(len(request.logits))
                request.future.set_result(request.logits)
