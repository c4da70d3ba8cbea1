"""A frontend worker: a process that owns the gRPC port and does every call's host work.

With `--frontend-workers N`, N such processes bind the service port together (SO_REUSEPORT:
the kernel spreads connections over them). Each runs the same `RankingService` as the
single-process server, decoding, validating and hashing requests and serializing responses,
but hands encoded requests to the device process over a Unix socket (`server.door.ipc`) instead of
to a batcher of its own, and reports each finished call there for the metrics. It imports
neither JAX nor the model's parameters: it starts in about a second.

Lifecycle: connect to the device process, bind the port, say READY; serve once the device
says SERVING; on DRAINING (or its own SIGTERM, or the device process going away) drain like
the single-process server (`server.door.transport.GrpcFront.stop`): refuse new calls, answer those
accepted, hold late callers until they go quiet, stop, exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import signal
import threading
import time

import grpc

from model.config import PhoenixModelConfig
from request.columns import SCHEMA, EncodedRequest, Layout
from request.hashing import TableRows
from server.config import ServerConfig
from server.door import ipc
from server.door.service import ModelFacts
from server.door.transport import GrpcFront
from server.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    QueueFull,
    ShuttingDown,
)
from server.operations import transport_stats
from server.operations.checkpoint_dir import ReloadState
from server.operations.lifecycle import Phase
from server.operations.metrics import CallRecord
from server.rpc import ranking_pb2 as pb

log = logging.getLogger("phoenix.frontend")

DEFAULT_RETRY_MS = 100  # a frontend's retry hint before the device process has sent one


class DeviceFailed(RuntimeError):
    """The device process answered INTERNAL (its message carries no internals)."""


_ERRORS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: lambda message, retry: QueueFull(message, retry),
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: lambda message, _: DeadlineExceeded(message),
    grpc.StatusCode.UNAVAILABLE.value[0]: lambda message, _: ShuttingDown(message),
    grpc.StatusCode.FAILED_PRECONDITION.value[0]: lambda message, _: FailedPrecondition(message),
    grpc.StatusCode.DATA_LOSS.value[0]: lambda message, _: DataLoss(message),
}


def _status_error(code: int, message: str) -> Exception:
    """The ServiceError a status code from the device process stands for (DeviceFailed for
    any other: INTERNAL, its message carrying no internals)."""
    make = _ERRORS.get(code)
    return make(message, 0) if make is not None else DeviceFailed(message)


@dataclasses.dataclass(frozen=True)
class WorkerArgs:
    """Everything a frontend process needs (picklable: it crosses a process spawn)."""

    index: int
    socket_path: str
    port: int
    config: ServerConfig
    model_config_json: str
    rows: tuple[int, int, int]
    model_info: bytes  # a serialized pb.ModelInfo


class DeviceLink:
    """The device process, seen from a frontend: the service's queue, its recorder and (with
    --admin-rpcs) its admin. It lives on the frontend's event loop; what handler threads call
    (`precheck`, `retry_hint_ms`, `started`, `finished`) only reads, or hops to the loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 layout: Layout, width: int):  # fmt: skip
        self.reader, self.writer = reader, writer
        self.layout, self.width = layout, width
        self.loop = asyncio.get_running_loop()
        self.in_flight = 0
        self.last_retry_ms = DEFAULT_RETRY_MS  # the device's latest retry hint
        # The device queue's latest fullness (`ipc.Door`), holding until its retry hint passes.
        self._fullness_s, self._fullness_until = 0.0, 0.0
        # Calls precheck refused for want of room, reported to the device process with those
        # the transport's door refused (`door_refusals`): counted by their handler as calls
        # too, so with method None.
        self.door_refusals: ipc.Refusals = {}
        self._door_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}  # submitted, not yet answered by the device
        self._answered = asyncio.Event()  # set whenever _pending is empty
        self._answered.set()
        self.state = asyncio.Queue()  # (STATE, reason) from the device, or None when it is gone
        self.on_info = None  # called with each new ModelInfo the device sends
        # What this process's transport refused before any handler (`GrpcFront.door_refusals`).
        self.door_refusals_of_front = dict
        self._reloads: dict[int, asyncio.Future] = {}  # ReloadModel calls awaiting the device
        self.broken = False

    # -- Queue ---------------------------------------------------------------------------

    def precheck(self, deadline: float | None) -> None:
        """Any thread. Refuses what the device process would: a deadline already passed, or
        (RESOURCE_EXHAUSTED) a queue its latest answer said was full, until that answer's
        retry hint has passed. So under overload the refusals are this process's, at the
        door, before a request is received, decoded and sent to be refused there."""
        if self.broken:
            raise ShuttingDown("the device process is gone; retry on another replica")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("deadline had already passed when the request arrived")
        if now < self._fullness_until and (deadline is None or deadline - now < self._fullness_s):
            self._refused(None, "queue_full")
            raise QueueFull("the queue is full; retry later", self.last_retry_ms)

    def retry_hint_ms(self) -> int:
        """Any thread: the device's latest retry hint (what its own refusals said)."""
        return self.last_retry_ms

    def fullness_s(self) -> float:
        """Any thread: the device queue's fullness as its latest answer said, until its retry
        hint has passed (the transport's door refuses scoring calls by it meanwhile)."""
        if self.broken or time.monotonic() >= self._fullness_until:
            return 0.0
        return self._fullness_s

    def _refused(self, method: str | None, reason: str) -> None:
        with self._door_lock:
            key = (method, reason)
            self.door_refusals[key] = self.door_refusals.get(key, 0) + 1

    def submit(self, encoded: EncodedRequest, deadline: float | None) -> asyncio.Future:
        """On the loop. Cancelling the future (its call ended) tells the device process to
        drop the request if it has not run yet."""
        if self.broken:
            raise ShuttingDown("the device process is gone; retry on another replica")
        call_id = next(self._ids)
        future = self.loop.create_future()
        self._pending[call_id] = future
        self._answered.clear()
        self.writer.write(ipc.submit_frame(call_id, deadline, self.in_flight, encoded, self.layout))
        future.add_done_callback(lambda f: self._cancel(call_id) if f.cancelled() else None)
        return future

    def _cancel(self, call_id: int) -> None:
        if call_id in self._pending and not self.broken:  # not answered yet
            self.writer.write(ipc.cancel_frame(call_id))

    async def idle(self, timeout: float) -> bool:
        """Wait until the device has answered every submitted call (even those whose caller
        cancelled meanwhile); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._answered.wait()
            return True
        except TimeoutError:
            return False

    # -- Recorder ------------------------------------------------------------------------

    def started(self) -> None:
        self.loop.call_soon_threadsafe(self._started)

    def finished(self, record: CallRecord) -> None:
        self.loop.call_soon_threadsafe(self._finished, record)

    def _started(self) -> None:
        self.in_flight += 1

    def _finished(self, record: CallRecord) -> None:
        if record.scoring:
            self.in_flight -= 1
        if not self.broken:
            self.writer.write(ipc.done_frame(record, self.in_flight))

    # -- Admin ---------------------------------------------------------------------------

    async def reload(self, check_now: bool) -> ReloadState:
        """ReloadModel, answered by the device process (which owns the versions)."""
        if self.broken:
            raise ShuttingDown("the device process is gone; retry on another replica")
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._reloads[call_id] = future
        self.writer.write(ipc.reload_frame(call_id, check_now))
        return await future

    async def report_transport(self) -> None:
        """Send what this process's gRPC transport counted (for the device's /metrics). The
        read runs on a thread: it costs ~0.3 ms per connection (server.operations.transport_stats)."""
        counts = await asyncio.to_thread(transport_stats.read)
        if counts is not None and not self.broken:
            with self._door_lock:
                refusals = dict(self.door_refusals)
            for key, count in self.door_refusals_of_front().items():
                refusals[key] = refusals.get(key, 0) + count
            self.writer.write(ipc.transport_frame(counts, refusals))

    # -- frames from the device ----------------------------------------------------------

    async def read_forever(self) -> None:
        try:
            while True:
                kind, payload = await ipc.read_frame(self.reader)
                if kind == ipc.RESULT:
                    self._resolve(*ipc.parse_result(payload, self.width))
                elif kind == ipc.STATE:
                    self.state.put_nowait(ipc.parse_state(payload))
                elif kind == ipc.INFO and self.on_info is not None:
                    self.on_info(pb.ModelInfo.FromString(payload))
                elif kind == ipc.RELOADED:
                    self._reloaded(*ipc.parse_reloaded(payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.broken = True
            for future in [*self._pending.values(), *self._reloads.values()]:
                if not future.done():
                    future.set_exception(ShuttingDown("the device process went away"))
            self._pending.clear()
            self._reloads.clear()
            self._answered.set()
            self.state.put_nowait(None)

    def _reloaded(self, call_id: int, code: int, body) -> None:
        future = self._reloads.pop(call_id, None)
        if future is None or future.done():
            return
        if code == 0:
            future.set_result(body)
        else:
            future.set_exception(_status_error(code, body))

    def _resolve(self, call_id: int, code: int, door: ipc.Door, body) -> None:
        if door.retry_ms:
            self.last_retry_ms = door.retry_ms
        # The queue's verdict holds until its retry hint has passed (or a later answer).
        self._fullness_s = door.fullness_s
        self._fullness_until = time.monotonic() + door.retry_ms / 1000 if door.fullness_s else 0.0
        future = self._pending.pop(call_id, None)
        if not self._pending:
            self._answered.set()
        if future is None or future.done():
            return
        if code == 0:
            future.set_result(body)
        elif code in _ERRORS:
            future.set_exception(_ERRORS[code](body, door.retry_ms))
        else:
            future.set_exception(DeviceFailed(body))


async def _report_transport(link: DeviceLink) -> None:
    while not link.broken:
        await link.report_transport()
        await asyncio.sleep(ipc.TRANSPORT_REPORT_SECONDS)


async def _run(args: WorkerArgs) -> int:
    config = args.config
    model_config = PhoenixModelConfig.from_json(args.model_config_json)
    reader, writer = await asyncio.open_unix_connection(args.socket_path, limit=ipc.MAX_FRAME_BYTES)
    link = DeviceLink(reader, writer, SCHEMA.layout(model_config), 2 * model_config.num_actions)
    facts = ModelFacts(
        model_config, TableRows(*args.rows), pb.ModelInfo.FromString(args.model_info)
    )
    admin = link if config.transport.admin_rpcs else None
    front = GrpcFront(facts, link, link, config, asyncio.get_running_loop(), admin,
                      reuse_port=True, port=args.port)  # fmt: skip
    link.on_info = front.publish
    link.door_refusals_of_front = front.door_refusals
    await front.start()
    reading = asyncio.get_running_loop().create_task(link.read_forever())
    reporting = asyncio.get_running_loop().create_task(_report_transport(link))
    writer.write(ipc.ready_frame(args.index))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    while True:
        next_state = asyncio.get_running_loop().create_task(link.state.get())
        await asyncio.wait({next_state, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done():
            next_state.cancel()
            break
        state = next_state.result()
        if state is None or state[0] >= Phase.DRAINING:  # draining, or the device process gone
            break
        phase, held = state
        front.hold(held)
        if phase is Phase.LAME_DUCK:
            await front.lame_duck()
        elif phase is Phase.SERVING:
            await front.serve()
    deadline = time.monotonic() + config.grace_seconds
    drained = await front.stop(deadline, link.idle)
    reporting.cancel()
    await link.report_transport()
    writer.close()
    reading.cancel()
    log.info("frontend %d stopped", args.index, extra={"fields": {"drained": drained}})
    return 0


def main(args: WorkerArgs) -> None:
    """Process entry point (multiprocessing spawn)."""
    from server.operations import logs

    logs.configure(args.config.log_level, args.config.log_json)
    raise SystemExit(asyncio.run(_run(args)))
