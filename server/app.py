"""Assembles the service and owns its lifecycle.

start     bind gRPC (health NOT_SERVING) and /metrics, start the batcher
warm_up   compile every batch shape off the event loop, then health SERVING
shutdown  health NOT_SERVING, refuse new requests (UNAVAILABLE), let queued and in-flight
          requests finish within the grace period, stay in lame-duck mode (answering
          UNAVAILABLE) until callers go quiet, then stop the servers

Why the lame-duck phase: gRPC's C core cancels (status CANCELLED) every call that reached the
transport but was not yet handed to a handler when the server stops. Stopping only once no
call has arrived for `LAME_DUCK_QUIET_SECONDS` (bounded by the grace period) means callers
that are still sending see UNAVAILABLE, which they know to retry elsewhere, not CANCELLED.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from model.checkpoint import default_checkpoint_path, load_checkpoint
from server.batcher import Batcher
from server.buckets import BucketPlan, make_plan
from server.config import ServerConfig
from server.metrics import Metrics
from server.rpc import ranking_pb2
from server.runner import ModelRunner, WarmupAborted, enable_compilation_cache
from server.service import RankingService, add_to_server

log = logging.getLogger("phoenix.server")

LAME_DUCK_QUIET_SECONDS = 0.25
MIN_WRITE_SECONDS = 0.5  # least time answered handlers get to write their responses on stop
SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name


def create_grpc_server(address: str, max_request_bytes: int) -> tuple[grpc.aio.Server, int]:
    """An aio server bound to `address` ("host:0" picks a port): (server, bound port)."""
    server = grpc.aio.server(
        options=[
            # Transport limit above the service's own, so oversize requests reach validation
            # and get INVALID_ARGUMENT naming the limit rather than a bare transport error.
            ("grpc.max_receive_message_length", 2 * max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC to {address}")
    return server, port


def _start_metrics_http(host: str, port: int, registry: CollectorRegistry):
    """Serve /metrics; "::" falls back to IPv4 on hosts without IPv6, as gRPC itself does."""
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError:
        if host != "::":
            raise
        server, _ = start_http_server(port, "0.0.0.0", registry)
    return server


def _log_compiled(done: int, total: int, shape, seconds: float) -> None:
    log.info(
        "compiled batch shape %d/%d %s in %.2fs",
        done,
        total,
        tuple(shape),
        seconds,
        extra={"fields": {"event": "compiled", "shape": list(shape)}},
    )


class RankingServer:
    def __init__(self, config: ServerConfig, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        if config.compilation_cache:
            enable_compilation_cache(str(config.compilation_cache))
        checkpoint = load_checkpoint(config.checkpoint or default_checkpoint_path())
        model_config = checkpoint.config
        shapes = config.shapes
        self.plan: BucketPlan = make_plan(
            model_config.history_seq_len,
            shapes.max_batch_size,
            shapes.candidate_buckets,
            shapes.history_buckets,
            shapes.max_batch_candidates,
        )
        self.runner = ModelRunner(checkpoint, self.plan, config.dtype, on_compile=self._compiled)
        self.port = self.metrics_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http = None
        self._health = health_aio.HealthServicer()
        self.batcher: Batcher | None = None
        self.service: RankingService | None = None
        info = checkpoint.info
        self.metrics.model_info.labels(
            info.model_version, info.file_sha256, self.runner.backend, self.runner.dtype.name,
            str(model_config.history_seq_len), str(model_config.emb_size),
            str(model_config.model.num_layers),
        ).set(1)  # fmt: skip

    def _compiled(self, shape, seconds: float) -> None:
        self.metrics.compilations.inc()
        self.metrics.compilation_seconds.inc(seconds)
        if self.service is not None and self.service.ready:
            log.warning("compiled batch shape %s after warm-up (%.2fs)", tuple(shape), seconds)

    async def start(self) -> None:
        c = self.config
        self.batcher = Batcher(self.runner, c.batcher, self.metrics)
        self.batcher.start()
        self.service = RankingService(self.runner, self.batcher, c.limits, self.metrics)
        self._grpc, self.port = create_grpc_server(f"{c.host}:{c.port}", c.limits.max_request_bytes)
        add_to_server(self.service, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._grpc,
        )  # fmt: skip
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._grpc.start()
        self._metrics_http = _start_metrics_http(c.host.strip("[]"), c.metrics_port, self.registry)
        self.metrics_port = self._metrics_http.server_port

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def warm_up(self, abort: threading.Event | None = None) -> float:
        """Compile every planned shape (off the event loop), then report SERVING."""
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(None, self.runner.warmup, abort, _log_compiled)
        # JAX, the model and the compiled executables are hundreds of thousands of long-lived
        # objects; freezing them keeps the garbage collector from rescanning them (a full
        # collection took 100-200 ms) while requests churn short-lived ones.
        gc.collect()
        gc.freeze()
        self.metrics.warmup_seconds.set(seconds)
        self.service.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return seconds

    async def _lame_duck(self, deadline: float) -> None:
        """Keep answering UNAVAILABLE until no call arrived for a quiet period (or deadline)."""
        while True:
            now = time.monotonic()
            quiet_at = self.service.last_call + LAME_DUCK_QUIET_SECONDS
            if now >= quiet_at or now >= deadline:
                return
            await asyncio.sleep(min(quiet_at, deadline) - now)

    async def shutdown(self, grace: float | None = None) -> bool:
        """Drain and stop; True if every accepted request finished within the grace period."""
        grace = self.config.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        await self._health.enter_graceful_shutdown()
        self.service.draining = True
        try:  # calls that arrived before SIGTERM and are still being decoded join the queue
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.service.preparing_done()
        except TimeoutError:
            pass
        self.batcher.close()
        drained = await self.batcher.drain(grace)
        if not drained:
            log.warning("grace period of %.1fs ran out with requests still queued", grace)
        await self._lame_duck(deadline)
        # Handlers of drained requests only have to write their responses now; even when the
        # drain used up the grace period, give them a moment rather than aborting them.
        await self._grpc.stop(max(MIN_WRITE_SECONDS, deadline - time.monotonic()))
        await self.batcher.stop(wait_for_device=drained)
        self._metrics_http.shutdown()
        self._metrics_http.server_close()
        return drained


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    import os
    import sys

    sys.setswitchinterval(float(os.environ.get("SWITCH_S", "0.005")))
    server = RankingServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening; warming up %d batch shapes",
        len(server.plan.shapes()),
        extra={
            "fields": {
                "event": "listening",
                "port": server.port,
                "metrics_port": server.metrics_port,
            }
        },
    )
    abort_warmup = threading.Event()
    warm = loop.create_task(server.warm_up(abort_warmup))
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({warm, stopped}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if not warm.done():  # SIGTERM during warm-up: stop compiling at the next shape
        abort_warmup.set()
        await asyncio.wait({warm})
    if warm.exception() is None and not stop.is_set():
        ready = {
            "event": "serving",
            "port": server.port,
            "metrics_port": server.metrics_port,
            "model_version": server.service.info.model_version,
            "warmup_seconds": round(warm.result(), 2),
        }
        log.info("serving", extra={"fields": ready})
        await stopped
    elif warm.exception() is not None and not isinstance(warm.exception(), WarmupAborted):
        log.error("warm-up failed; not serving", exc_info=warm.exception())
        exit_code = 1
    log.info("shutting down (grace %.1fs)", config.grace_seconds)
    drained = await server.shutdown()
    log.info("stopped", extra={"fields": {"drained": drained}})
    return exit_code
