"""The gRPC front door: one aio server with the ranking service, health and reflection, and
its drain. Used by the single-process server and by each frontend worker alike.

Drain, in order: health NOT_SERVING and new calls UNAVAILABLE; calls already past the door
finish decoding and join the queue; `wait_for_work` waits for the accepted work to be answered;
then lame duck until callers go quiet; then the transport stops.

Why the lame-duck phase: gRPC's C core cancels (status CANCELLED) every call that reached the
transport but was not yet handed to a handler when the server stops. Stopping only once no
call has arrived for `LAME_DUCK_QUIET_SECONDS` (bounded by the grace period) means callers
that are still sending see UNAVAILABLE, which they know to retry elsewhere, not CANCELLED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.rpc import ranking_pb2 as pb
from server.service import RankingService, add_to_server

log = logging.getLogger("phoenix.server")

LAME_DUCK_QUIET_SECONDS = 0.25
MIN_WRITE_SECONDS = 0.5  # least time answered handlers get to write their responses on stop
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankingService"].full_name


def create_grpc_server(
    address: str, max_request_bytes: int, max_concurrent_rpcs: int | None = None,
    reuse_port: bool = False, max_pending_calls: int | None = None,
) -> tuple[grpc.aio.Server, int]:  # fmt: skip
    """An aio server bound to `address` ("host:0" picks a port): (server, bound port).

    `max_concurrent_rpcs`: calls beyond it are refused by gRPC itself (RESOURCE_EXHAUSTED)
    before any Python runs. `reuse_port`: several processes may bind the same port
    (SO_REUSEPORT); the kernel spreads connections across them. `max_pending_calls`: the
    transport's backlog of calls not yet taken by the event loop; past it gRPC's C core sheds
    new calls at random, and past 4x it sheds them all (see server.config).
    """
    pending = []
    if max_pending_calls:
        pending = [
            ("grpc.server.max_pending_requests", max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", 4 * max_pending_calls),
        ]
    server = grpc.aio.server(
        options=[
            # Transport limit above the service's own, so oversize requests reach validation
            # and get INVALID_ARGUMENT naming the limit rather than a bare transport error.
            ("grpc.max_receive_message_length", 2 * max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port)),
            *pending,
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC to {address}")
    return server, port


class GrpcFront:
    """A bound gRPC server for one RankingService, with health and its drain."""

    def __init__(self, service: RankingService, address: str, max_request_bytes: int,
                 max_concurrent_rpcs: int | None = None, reuse_port: bool = False,
                 max_pending_calls: int | None = None):  # fmt: skip
        self.service = service
        self.health = health_aio.HealthServicer()
        self.server, self.port = create_grpc_server(
            address, max_request_bytes, max_concurrent_rpcs, reuse_port, max_pending_calls
        )
        add_to_server(service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.server,
        )  # fmt: skip

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def set_serving(self) -> None:
        self.service.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def drain(
        self, deadline: float, wait_for_work: Callable[[float], Awaitable[bool]]
    ) -> bool:
        """Drain and stop by `deadline` (time.monotonic()); True if all accepted work was
        answered. `wait_for_work(timeout)` closes the queue and waits for its work."""
        await self.health.enter_graceful_shutdown()
        self.service.draining = True
        try:  # calls that arrived before the drain and are still being decoded join the queue
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.service.preparing_done()
        except TimeoutError:
            pass
        drained = await wait_for_work(max(0.0, deadline - time.monotonic()))
        if not drained:
            log.warning("grace period ran out with requests still queued")
        # The last answers just went out, and their callers may send again at once: the quiet
        # period starts now, not at the last arrival.
        await self._lame_duck(deadline, quiet_since=time.monotonic())
        # Handlers of drained requests only have to write their responses now; even when the
        # drain used up the grace period, give them a moment rather than aborting them.
        await self.server.stop(max(MIN_WRITE_SECONDS, deadline - time.monotonic()))
        return drained

    async def _lame_duck(self, deadline: float, quiet_since: float) -> None:
        """Keep answering UNAVAILABLE until no call arrived for a quiet period (or deadline)."""
        while True:
            now = time.monotonic()
            quiet_at = max(self.service.last_call, quiet_since) + LAME_DUCK_QUIET_SECONDS
            if now >= quiet_at or now >= deadline:
                return
            await asyncio.sleep(min(quiet_at, deadline) - now)
