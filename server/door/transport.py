"""The gRPC transport: one gRPC server with the ranking services, health and reflection, its
options, its limits and its drain; and `Front`, the one interface of the two ways to serve the
port.

The server is grpcio's synchronous one, whose handlers run on a pool of threads (as many as
the calls it may hold: `server.door.call_limits.call_capacity`, sized from the process's threads
and memory) and which decides on its polling thread, before a handler or the request body is
touched, whether to take a call: `server.door.call_limits.Door` refuses a scoring call while the
queue is full, or past the capacity, RESOURCE_EXHAUSTED with a retry hint computed from the
queue, about 50 us of CPU a call (grpcio 1.85.3, measured in a probe). Its asyncio server
can only refuse in a handler, at about four times that cost, or let gRPC's core shed calls
past a backlog with status CANCELLED (the previous design: docs/performance.md's host-path
figures compare them). The handlers hand their requests to the queue on the
process's event loop (`server.door.service`).

Two fronts serve the gRPC port, both driven the same way by `server.app`:
  `GrpcFront`                       one gRPC server in this process (also what each frontend
                                    worker process runs, with `server.door.frontend_worker`)
  `server.door.frontend_hub.FrontendHub` frontend worker processes sharing the port, fed from here

Shutdown (SIGTERM), everything by the grace period's end (`server.operations.lifecycle` holds the phases):

0. LAME_DUCK (`lame_duck`, then `server.app` waits `--drain-delay-seconds`): health
   NOT_SERVING and readiness 503 at once, while new calls are still admitted and answered,
   so that balancers polling either stop sending before anything is refused.
1. DRAINING: new calls are answered UNAVAILABLE at once (retry
   elsewhere); calls already past the door finish decoding and join the queue;
   `drain_queue` waits until the accepted work is answered (until `STOP_RESERVE_SECONDS`
   before the end at the latest).
2. PARKING: new calls are *parked* (held, unanswered) until no call has arrived for
   `PARK_QUIET_SECONDS`, at most `PARK_MAX_SECONDS`.
3. STOPPED: the transport stops (listener closed, GOAWAY sent), then the parked calls are
   answered UNAVAILABLE, and the server waits for the last responses to be written.

Why park: gRPC's C core cancels (status CANCELLED) every call that has reached the transport
but not yet a handler when the server stops. A client that re-sends the instant it is
refused always has such a call in transit, so answering UNAVAILABLE at once would never let
callers go quiet, and whatever moment the server stopped at, their calls in transit would end
CANCELLED. A parked caller is waiting for its answer and sends nothing; once every caller is
parked, nothing is in transit, and each gets UNAVAILABLE after the listener has closed (a
re-send then fails to connect: UNAVAILABLE again, at the client). A caller waits at most
`PARK_MAX_SECONDS` longer for its refusal.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import ServerConfig, Transport
from server.door.call_limits import (
    SLOW_BODIES,
    Door,
    ReceiveWatchdog,
    call_capacity,
    door_places,
    install_door,
    install_retry_hint,
    remove_door,
    watch_receive_failures,
)
from server.door.service import Admin, ModelFacts, Queue, RankingService, Recorder, add_to_server
from server.operations import transport_stats
from server.operations.lifecycle import Lifecycle, Phase
from server.operations.metrics import short_method
from server.operations.transport_stats import TransportCounts
from server.rpc import ranking_pb2 as pb
from server.rpc import recsys_pb2 as xpb

log = logging.getLogger("phoenix.server")

PARK_QUIET_SECONDS = 0.05  # no arrival for this long: every caller is parked
PARK_MAX_SECONDS = 0.5  # the longest a call is parked
STOP_RESERVE_SECONDS = 0.5  # of the grace period, kept for writing the last responses and exit
# Python's thread switch interval in a serving process (the default is 5 ms). gRPC's polling
# thread, which takes and refuses calls, must get the interpreter promptly while handler
# threads decode and the loop batches: at 5 ms, refusals at 4x overload took up to 70 ms.
SWITCH_INTERVAL_S = 0.0005
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankingService"].full_name
XAI_SERVICE_NAME = xpb.DESCRIPTOR.services_by_name["RecsysPredictor"].full_name
SERVICE_NAMES = (SERVICE_NAME, XAI_SERVICE_NAME)  # health reports each, reflection lists them
SCORING_METHODS = frozenset((f"/{SERVICE_NAME}/Rank", f"/{XAI_SERVICE_NAME}/PredictNextActions"))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def channel_options(transport: Transport, max_request_bytes: int) -> list[tuple[str, int]]:
    """gRPC core arguments of the server: message limits, backlog, connection hygiene."""
    t = transport
    options = [
        # Transport limit above the service's own, so oversize requests reach validation
        # and get INVALID_ARGUMENT naming the limit rather than a bare transport error.
        ("grpc.max_receive_message_length", transport_limit(max_request_bytes)),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", t.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", _ms(t.max_connection_idle_s)),
        ("grpc.server_handshake_timeout_ms", _ms(t.handshake_timeout_s)),
        ("grpc.keepalive_time_ms", _ms(t.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(t.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(t.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        # With a stream limit set, gRPC's overload protection refuses (REFUSED_STREAM, which a
        # client sees as UNAVAILABLE) streams of clients that respect the limit, around 1% at
        # it, because finished streams stay allocated briefly: off.
        ("grpc.http.overload_protection", 0),
    ]
    if t.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", _ms(t.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(t.max_connection_age_grace_s)),
        ]
    if t.max_pending_calls:
        options += [
            ("grpc.server.max_pending_requests", t.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", 4 * t.max_pending_calls),
        ]
    return options


def transport_limit(max_request_bytes: int) -> int:
    """The largest message gRPC itself accepts; beyond it gRPC answers RESOURCE_EXHAUSTED
    ("Received message larger than max") before any of our code runs."""
    return 2 * max_request_bytes


def server_credentials(transport: Transport) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files (mutual TLS with a client CA); None: plaintext."""
    t = transport
    if t.tls_cert is None and t.tls_key is None:
        if t.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if t.tls_cert is None or t.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    chain, key = Path(t.tls_cert).read_bytes(), Path(t.tls_key).read_bytes()
    client_ca = Path(t.tls_client_ca).read_bytes() if t.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def scoring_capacity(transport: Transport, max_request_bytes: int) -> int:
    """Scoring calls a gRPC server takes at once (`server.door.call_limits.call_capacity`): each
    holds a thread and at most a transport-limit-sized request."""
    return call_capacity(transport.max_concurrent_rpcs, transport_limit(max_request_bytes))


def start_threads(pool: concurrent.futures.ThreadPoolExecutor, count: int) -> None:
    """Start `count` of the pool's threads now. A pool starts a thread when a task finds none
    idle, and the submitter waits for it to start: gRPC submits each call from its one polling
    thread, which under a flood would stall on thread starts, each waiting for the interpreter
    (measured: calls then waited seconds to be taken at all). Started at once, they wait asleep."""
    started, release = threading.Barrier(count + 1), threading.Event()

    def hold() -> None:
        started.wait()
        release.wait()

    for _ in range(count):
        pool.submit(hold)
    started.wait()
    release.set()


def create_grpc_server(
    address: str, transport: Transport, max_request_bytes: int, reuse_port: bool = False
) -> tuple[grpc.Server, int, concurrent.futures.ThreadPoolExecutor]:
    """A server bound to `address` ("host:0" picks a port): (server, bound port, the pool of
    its handler threads).

    It holds `door_places` calls at once, each on a thread of its own: `scoring_capacity`
    scoring calls with their bodies, RECEIVE_PLACES awaiting them, CONTROL_RESERVE others;
    `server.door.call_limits.Door`, once installed, decides which it takes (by the queue's state
    too); without it, gRPC refuses past that count (RESOURCE_EXHAUSTED) before any handler.
    `reuse_port`: several processes may bind the same port (SO_REUSEPORT); the kernel spreads
    connections across them.
    """
    places = door_places(scoring_capacity(transport, max_request_bytes))
    pool = concurrent.futures.ThreadPoolExecutor(places, thread_name_prefix="grpc")
    start_threads(pool, places)
    server = grpc.server(
        pool,
        options=[
            *channel_options(transport, max_request_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
        maximum_concurrent_rpcs=places,
    )
    credentials = server_credentials(transport)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # what grpcio raises when the bind fails
        port = 0
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}: in use, or not an address of this host")
    return server, port, pool


DrainQueue = Callable[[float], Awaitable[bool]]  # (timeout s) -> every accepted call answered


class Front(Protocol):
    """What serves the gRPC port: `GrpcFront` or `server.door.frontend_hub.FrontendHub`."""

    port: int  # the bound gRPC port

    async def start(self) -> None:
        """Bind the port; health NOT_SERVING, calls refused UNAVAILABLE until `serve`."""

    async def serve(self) -> None:
        """Health SERVING; calls are admitted."""

    def publish(self, info: pb.ModelInfo) -> None:
        """A new serving version's ModelInfo (GetModelInfo answers it from now on)."""

    def hold(self, reason: str | None) -> None:
        """No version may serve (`reason`): health NOT_SERVING, calls refused UNAVAILABLE
        with the reason; None: serving again (`server.operations.lifecycle`). On the loop."""

    async def lame_duck(self) -> None:
        """SIGTERM: health NOT_SERVING and not ready, calls still admitted (LAME_DUCK)."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not or "ready"): what /readyz answers; any thread."""

    def transport_counts(self) -> TransportCounts | None:
        """What gRPC's transport counted (`server.operations.transport_stats`); any thread."""

    async def stop(self, deadline: float, drain_queue: DrainQueue) -> bool:
        """Drain and stop by `deadline` (time.monotonic()); True if all accepted work was
        answered. `drain_queue(timeout)` closes the queue and waits for its work."""


class GrpcFront:
    """A bound gRPC server for one RankingService, with health, its limits and its drain.
    `loop`: the event loop the queue lives on (and `stop` runs on)."""

    def __init__(self, facts: ModelFacts, queue: Queue, recorder: Recorder, config: ServerConfig,
                 loop: asyncio.AbstractEventLoop, admin: Admin | None = None,
                 reuse_port: bool = False, port: int | None = None):  # fmt: skip
        """`admin`: the admin calls' side (None: they are off); `port`: the port to bind
        (default `config.port`)."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        t, limits = config.transport, config.limits
        self.lifecycle = Lifecycle()
        self.capacity = scoring_capacity(t, limits.max_request_bytes)
        self.watchdog = ReceiveWatchdog(t.receive_timeout_s, SLOW_BODIES)
        install_retry_hint(queue.retry_hint_ms)
        watch_receive_failures()
        self.service = RankingService(facts, queue, limits, recorder, self.lifecycle,
                                      loop, self.watchdog.receive, admin)  # fmt: skip
        self.health = health.HealthServicer()
        address = f"{config.host}:{config.port if port is None else port}"
        self.server, self.port, self._pool = create_grpc_server(
            address, t, limits.max_request_bytes, reuse_port
        )
        self.door = Door(self.capacity, SCORING_METHODS, queue.fullness_s,
                         limits.default_deadline_ms / 1000,
                         queued=lambda: self.service.queued_calls,
                         waiting=lambda: self.watchdog.waiting,
                         penalties=self.watchdog.penalties)  # fmt: skip
        install_door(self.server, self._pool, self.door)
        add_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.transport.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME),
                self.server,
            )  # fmt: skip

    async def start(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.start()
        self.lifecycle.advance(Phase.WARMING)

    async def serve(self) -> None:
        self.lifecycle.advance(Phase.SERVING)
        if self.lifecycle.held is None:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def publish(self, info: pb.ModelInfo) -> None:
        self.service.info = info

    async def lame_duck(self) -> None:
        self.health.enter_graceful_shutdown()  # NOT_SERVING, whatever is set later
        self.lifecycle.advance(Phase.LAME_DUCK)

    def readiness(self) -> tuple[bool, str]:
        return self.lifecycle.readiness()

    def hold(self, reason: str | None) -> None:
        self.lifecycle.hold(reason)
        if self.lifecycle.serving:
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING if reason is not None
                             else health_pb2.HealthCheckResponse.SERVING)  # fmt: skip

    def transport_counts(self) -> TransportCounts | None:
        return transport_stats.read()

    def door_refusals(self) -> dict[tuple[str | None, str], int]:
        """Calls the transport refused before any handler so far, by (method, reason): the
        method's short name if it is one of ours (`server.operations.metrics.short_method`), else None."""
        out: collections.Counter = collections.Counter()
        for (method, reason), count in self.door.refused().items():
            out[(short_method(method), reason)] += count
        return dict(out)

    def _set_health(self, status) -> None:
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    async def stop(self, deadline: float, drain_queue: DrainQueue) -> bool:
        """Drain (see the module docstring) and stop by `deadline`."""
        lifecycle = self.lifecycle
        work_deadline = deadline - min(STOP_RESERVE_SECONDS, (deadline - time.monotonic()) / 4)
        self.health.enter_graceful_shutdown()
        lifecycle.advance(Phase.DRAINING)
        # Calls that arrived before the drain and are still being decoded join the queue.
        await asyncio.to_thread(lifecycle.wait_settled, max(0.0, work_deadline - time.monotonic()))
        drained = await drain_queue(max(0.0, work_deadline - time.monotonic()))
        if not drained:
            log.warning("grace period ran out with requests still queued")
        lifecycle.advance(Phase.PARKING)
        now = time.monotonic()
        await self._park(min(work_deadline, now + PARK_MAX_SECONDS), quiet_since=now)
        # The stop begins at once (no new connection, GOAWAY on the old ones); then the parked
        # calls are answered UNAVAILABLE, within what is left of the grace period.
        stopped = self.server.stop(max(0.0, deadline - time.monotonic()))
        lifecycle.advance(Phase.STOPPED)
        await asyncio.to_thread(stopped.wait)
        self.watchdog.stop()
        remove_door(self._pool)
        return drained

    async def _park(self, until: float, quiet_since: float) -> None:
        """Park arriving calls until none arrived for a quiet period (or `until`)."""
        while True:
            now = time.monotonic()
            quiet_at = self.lifecycle.quiet_since(quiet_since) + PARK_QUIET_SECONDS
            if now >= quiet_at or now >= until:
                return
            await asyncio.sleep(min(quiet_at, until) - now)
