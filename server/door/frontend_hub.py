"""The device process's side of frontend workers: spawn them, feed their requests to the
batcher, answer them, and count their calls. `FrontendHub` is a `server.door.transport.Front`:
`server.app` drives it exactly as it drives the in-process `GrpcFront`.

Per request the device process only parses one SUBMIT frame (`np.frombuffer` per array),
submits to the batcher and writes one RESULT frame: decoding, validation, hashing and response
serialization happen in the frontends, on other cores. Admission is unchanged: the batcher
refuses by work and deadline, and the refusal travels back as a RESULT with its status code
and retry hint. Every frontend call is counted here from its DONE frame, and what each
frontend's gRPC transport counted (calls shed before a handler, calls it holds) from its
TRANSPORT frames, so /metrics (served by this process) sees every call of every frontend.

Where this pays: per call, the gRPC machinery and the host work cost roughly 0.43 ms of CPU
(bench/host_path.py's door section, core threads included) and 0.1-0.2 ms here, against a device that computes a 32-candidate request in ~0.4 ms on this
CPU and one to two orders of magnitude faster on a GPU. One process tops out at one core of
host work (~2,000-3,000 calls/s); N frontends scale that to N cores, so on a GPU host with 8-16
cores per device the ceiling becomes min(N x E, 1 / F) rather than 1 / (1/E + F). On a 2-core
machine where the model itself runs on the same cores, there is no spare core to gain
(bench/host_path.py measures both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import multiprocessing
import os
import socket
import tempfile
import time
from pathlib import Path

import grpc

from request.columns import SCHEMA
from server.config import ServerConfig
from server.door import ipc
from server.door.frontend_worker import WorkerArgs, main
from server.door.service import Admin, ModelFacts
from server.door.transport import DrainQueue
from server.errors import QueueFull, ServiceError, ShuttingDown
from server.operations.lifecycle import Lifecycle, Phase
from server.operations.metrics import Metrics, MetricsRecorder
from server.operations.transport_stats import TransportCounts
from server.rpc import ranking_pb2 as pb
from server.scheduling.batcher import Batcher

log = logging.getLogger("phoenix.server")

STARTUP_TIMEOUT = 60.0  # seconds for every frontend to bind its port and say READY
SUPERVISE_SECONDS = 1.0  # how often dead frontends are looked for
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket holding `port` (0: a free one) so that the
    frontends can all bind it; close it once they have."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        if host.strip("[]") != "::":
            raise
        sock.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", port))
    return sock


class FrontendHub:
    """Spawns `workers` frontend processes and serves their Unix sockets."""

    def __init__(self, config: ServerConfig, workers: int, facts: ModelFacts, batcher: Batcher,
                 metrics: Metrics, admin: Admin | None = None):  # fmt: skip
        """`admin`: what answers the frontends' admin calls (only asked with --admin-rpcs)."""
        self.config = config
        self.workers = workers
        self.facts = facts
        self.batcher = batcher
        self.admin = admin
        self.recorder = MetricsRecorder(metrics, in_flight=False)
        self.metrics = metrics
        self.layout = SCHEMA.layout(facts.config)
        self._dir = tempfile.mkdtemp(prefix="phoenix-workers-")
        self.socket_path = str(Path(self._dir) / "device.sock")
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._in_flight: dict[int, int] = {}  # frontend connection -> its calls in flight
        self._transport: dict[int, TransportCounts] = {}  # frontend connection -> its report
        self._transport_gone = TransportCounts()  # frontends that have disconnected, summed
        self._ready = 0
        self._all_ready = asyncio.Event()
        self._processes: list[multiprocessing.Process] = []
        self._context = multiprocessing.get_context("spawn")
        self.lifecycle = Lifecycle()  # the frontends follow it (STATE frames)
        self._supervisor: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen, spawn the frontends on the service port, wait until they have bound it."""
        self._server = await asyncio.start_unix_server(
            self._serve, self.socket_path, limit=ipc.MAX_FRAME_BYTES
        )
        holder = reserve_port(self.config.host, self.config.port)
        self.port = holder.getsockname()[1]
        try:
            for index in range(self.workers):
                self._processes.append(self._spawn(index))
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while not self._all_ready.is_set():
                    dead = [p.name for p in self._processes if p.exitcode is not None]
                    if dead:
                        raise RuntimeError(f"frontend workers exited at start-up: {dead}")
                    try:
                        async with asyncio.timeout(0.2):
                            await self._all_ready.wait()
                    except TimeoutError:
                        pass
        except BaseException:
            self.kill()
            raise
        finally:
            holder.close()
        self.lifecycle.advance(Phase.WARMING)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _spawn(self, index: int) -> multiprocessing.Process:
        f = self.facts
        args = WorkerArgs(index, self.socket_path, self.port, self.config, f.config.to_json(),
                          tuple(f.rows), f.info.SerializeToString())  # fmt: skip
        process = self._context.Process(target=main, args=(args,), name=f"frontend-{index}")
        process.start()
        return process

    async def _supervise(self) -> None:
        """Replace a frontend that dies while serving (its share of the port would be gone)."""
        while self.lifecycle.phase < Phase.LAME_DUCK:
            await asyncio.sleep(SUPERVISE_SECONDS)
            for index, process in enumerate(self._processes):
                if process.exitcode is not None and self.lifecycle.phase < Phase.LAME_DUCK:
                    log.error("frontend %s exited with %s; starting another", process.name,
                              process.exitcode)  # fmt: skip
                    self._processes[index] = self._spawn(index)

    async def serve(self) -> None:
        """Every frontend serves (health SERVING); one started later is told on READY."""
        await self._broadcast(Phase.SERVING)

    async def _broadcast(self, phase: Phase) -> None:
        self.lifecycle.advance(phase)
        for writer in self._send_all(self._state_frame()):
            await writer.drain()

    def _state_frame(self) -> bytes:
        return ipc.state_frame(self.lifecycle.phase, self.lifecycle.held)

    async def lame_duck(self) -> None:
        """Every frontend turns health NOT_SERVING and keeps serving (LAME_DUCK)."""
        await self._broadcast(Phase.LAME_DUCK)

    def readiness(self) -> tuple[bool, str]:
        """What /readyz answers (the lifecycle the frontends follow)."""
        return self.lifecycle.readiness()

    def hold(self, reason: str | None) -> None:
        """Every frontend refuses calls UNAVAILABLE with `reason` (health NOT_SERVING);
        None: they serve again."""
        self.lifecycle.hold(reason)
        if self.lifecycle.serving:
            self._send_all(self._state_frame())

    def publish(self, info: pb.ModelInfo) -> None:
        """A new ModelInfo for the frontends' GetModelInfo (after a swap); frontends started
        later get it with their arguments."""
        self.facts = dataclasses.replace(self.facts, info=info)
        self._send_all(ipc.info_frame(info.SerializeToString()))

    def _send_all(self, frame: bytes) -> list[asyncio.StreamWriter]:
        """Write `frame` to every connected frontend; returns the writers written to."""
        open_writers = [w for w in self._writers if not w.is_closing()]
        for writer in open_writers:
            writer.write(frame)
        return open_writers

    async def stop(self, deadline: float, drain_queue: DrainQueue) -> bool:
        """Tell the frontends to drain (each answers its accepted calls, from this process's
        queue, and exits), wait for them, then for the queue; True if all were done by
        `deadline` (time.monotonic())."""
        clean = await self._stop_frontends(max(0.0, deadline - time.monotonic()))
        drained = await drain_queue(max(0.0, deadline - time.monotonic()))
        return drained and clean

    async def _stop_frontends(self, timeout: float) -> bool:
        """Tell the frontends to drain, wait for them to exit; True if all did in time."""
        await self._broadcast(Phase.DRAINING)
        if self._supervisor is not None:
            self._supervisor.cancel()
        loop = asyncio.get_running_loop()
        clean = True
        for process in self._processes:
            await loop.run_in_executor(None, process.join, timeout)
            if process.exitcode is None:
                clean = False
                log.warning("frontend %s did not drain in time; killing it", process.name)
                process.kill()
                await loop.run_in_executor(None, process.join, 5)
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.socket_path)
            os.rmdir(self._dir)
        except OSError:
            pass
        return clean

    def kill(self) -> None:
        for process in self._processes:
            if process.exitcode is None:
                process.kill()

    # -- one frontend connection ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = id(writer)
        calls: dict[int, asyncio.Future] = {}  # this frontend's requests on the queue, by call id
        door_counted: ipc.Refusals = {}  # of its refusals before the queue, those counted
        self._writers.append(writer)
        try:
            while True:
                kind, payload = await ipc.read_frame(reader)
                if kind == ipc.SUBMIT:
                    self._submit(payload, writer, calls)
                elif kind == ipc.CANCEL:
                    future = calls.get(ipc.parse_cancel(payload))
                    if future is not None:
                        future.cancel()  # dropped before it runs; answered CANCELLED
                elif kind == ipc.DONE:
                    record, in_flight = ipc.parse_done(payload)
                    self._set_in_flight(key, in_flight)
                    self.recorder.finished(record)
                elif kind == ipc.RELOAD:
                    asyncio.get_running_loop().create_task(
                        self._reload(*ipc.parse_reload(payload), writer)
                    )
                elif kind == ipc.TRANSPORT:
                    counts, door_refusals = ipc.parse_transport(payload)
                    self._transport[key] = self._transport.get(key, TransportCounts()).then(counts)
                    # A frontend's door refuses by the queue's verdict: the queue's refusals.
                    for (method, reason), count in door_refusals.items():
                        new = count - door_counted.get((method, reason), 0)
                        if new > 0:
                            self.recorder.refused_before_handler(method, reason, new)
                            door_counted[(method, reason)] = count
                elif kind == ipc.READY:
                    self._ready += 1
                    if self._ready >= self.workers:
                        self._all_ready.set()
                    if self.lifecycle.phase >= Phase.SERVING:  # a replacement joins later
                        writer.write(self._state_frame())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in calls.values():  # its calls are gone with it: drop their work
                future.cancel()
            self._set_in_flight(key, 0)
            # The calls open at a gone frontend's last report (up to a second old) have ended
            # since, or were lost with it (its clients saw UNAVAILABLE): failed, not shed.
            gone = self._transport.pop(key, TransportCounts())
            self._transport_gone += dataclasses.replace(gone, failed=gone.failed + gone.open,
                                                        open=0)  # fmt: skip
            self._writers.remove(writer)
            writer.close()

    def transport_counts(self) -> TransportCounts:
        """What the frontends' gRPC transports counted, summed (as last reported). Called from
        the metrics thread: the copy of the reports is one step under the GIL."""
        return sum(list(self._transport.values()), self._transport_gone)

    async def _reload(self, call_id: int, check_now: bool, writer: asyncio.StreamWriter) -> None:
        """A frontend's ReloadModel call, answered by the admin side of this process."""
        try:
            if self.admin is None:
                raise ShuttingDown("admin calls are not served by this process")
            frame = ipc.reloaded_frame(call_id, 0, await self.admin.reload(check_now))
        except ServiceError as e:
            frame = ipc.reloaded_frame(call_id, e.code.value[0], message=str(e))
        except Exception:
            log.exception("ReloadModel failed")
            frame = ipc.reloaded_frame(call_id, _INTERNAL, message="reload failed")
        if not writer.is_closing():
            writer.write(frame)

    def _set_in_flight(self, key: int, count: int) -> None:
        self._in_flight[key] = count
        self.metrics.in_flight.set(sum(self._in_flight.values()))

    def _submit(self, payload: memoryview, writer: asyncio.StreamWriter,
                calls: dict[int, asyncio.Future]) -> None:  # fmt: skip
        call_id, deadline, in_flight, encoded = ipc.parse_submit(payload, self.layout)
        self._set_in_flight(id(writer), in_flight)
        try:
            future = self.batcher.submit(encoded, deadline)
        except ServiceError as e:
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            writer.write(_refusal_frame(call_id, e, ipc.Door(*self.batcher.door()), remaining))
            return
        calls[call_id] = future
        future.add_done_callback(lambda f: (calls.pop(call_id, None),
                                            self._answer(f, call_id, writer)))  # fmt: skip

    def _answer(self, future: asyncio.Future, call_id: int, writer: asyncio.StreamWriter) -> None:
        if writer.is_closing():
            return
        door = ipc.Door(*self.batcher.door())
        if future.cancelled():
            frame = ipc.result_frame(call_id, _CANCELLED, door, message="cancelled")
        elif isinstance(future.exception(), ServiceError):
            frame = _refusal_frame(call_id, future.exception(), door)
        elif future.exception() is not None:
            log.error("batch failed for a frontend call", exc_info=future.exception())
            frame = ipc.result_frame(call_id, _INTERNAL, door, message="batch failed")
        else:
            frame = ipc.result_frame(call_id, 0, door, scored=future.result())
        writer.write(frame)


def _refusal_frame(call_id: int, error: ServiceError, door: ipc.Door,
                   remaining_s: float = math.inf) -> bytes:  # fmt: skip
    """The RESULT frame of a refused call: its status, message and retry hint."""
    if isinstance(error, QueueFull):  # full at least for calls with no more time than this one
        door = ipc.Door(max(door.fullness_s, remaining_s), error.retry_after_ms)
    return ipc.result_frame(call_id, error.code.value[0], door, message=str(error))
