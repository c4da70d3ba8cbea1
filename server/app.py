"""Assembles the service and runs it from start to stop.

start     bind /metrics; start the batcher; bind gRPC (health NOT_SERVING) through the front:
          in this process, or in frontend worker processes (`--frontend-workers`); both are a
          `server.door.transport.Front`, driven the same way
warm_up   compile the shapes that hold any request off the event loop (`server.compilation`),
          then the front serves; start watching for new versions (`server.publication`)
compile_rest  compile the other planned shapes on a thread while serving; batches use each
          shape once it is ready (`compiled_all` logged at the end)
shutdown  the front drains (`server.operations.lifecycle`, `server.door.transport`): refuse
          new requests (UNAVAILABLE), let queued and in-flight requests finish, hold late
          callers until they go quiet, stop; all within the grace period

`RankingServer` only puts the parts together: the versions are `server.publication`'s, the
compiled shapes `server.compilation`'s, the phases the front's lifecycle.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import threading
import time

from prometheus_client import CollectorRegistry

from model.errors import CheckpointError
from model.tables import describe_tables
from server.compilation import Compilation
from server.config import ServerConfig
from server.cores import available_cores
from server.door.frontend_hub import FrontendHub
from server.door.service import ModelFacts
from server.door.transport import Front, GrpcFront
from server.engine.device import WarmupAborted, enable_compilation_cache
from server.engine.mapped_file import install_lease_handler
from server.engine.runner import ModelRunner, placement_for, plan_for
from server.operations.checkpoint_dir import VersionFile
from server.operations.metrics import Metrics, MetricsRecorder
from server.operations.metrics_http import (
    MetricsHTTPServer,
    Probes,
    start_metrics_http,
    tls_context,
)
from server.publication import Publication, first_version
from server.scheduling.batcher import Batcher

log = logging.getLogger("phoenix.server")

# /healthz says the process is stuck when its event loop has not turned for this long (it
# turns every HEARTBEAT_SECONDS at least; nothing on it may block for more than milliseconds).
HEARTBEAT_SECONDS = 1.0
LIVENESS_STALL_SECONDS = 10.0
# Of the grace period, what the lame duck leaves at least for draining and stopping.
DRAIN_RESERVE_SECONDS = 2.0


class RankingServer:
    """The model runner, the batcher, and the front that serves the gRPC port (one gRPC server
    in this process, or `frontend_workers` frontend processes); /metrics always from here."""

    def __init__(self, config: ServerConfig, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        if config.compilation_cache:
            enable_compilation_cache(config.compilation_cache.expanduser())
        refused: set[VersionFile] = set()
        # Tables placed on the device are read whole anyway, so they are checked against their
        # checksums now; host-placed ones after SERVING, in the background (`verify_tables`).
        on_device = lambda c: placement_for(c, config) == "device"  # noqa: E731
        version_file, checkpoint, version = first_version(config, self.metrics, refused,
                                                          on_device)  # fmt: skip
        t = config.tables
        log.info("%s, placed on the %s (--table-placement %s, --table-sharding %s)",
                 describe_tables(checkpoint.rows, checkpoint.config.emb_size,
                                 checkpoint.table_dtype),
                 placement_for(checkpoint, config), t.table_placement, t.table_sharding,
                 extra={"fields": {"event": "tables", "table_bytes": checkpoint.table_bytes,
                                   "table_dtype": checkpoint.table_dtype,
                                   "placement": placement_for(checkpoint, config)}})  # fmt: skip
        self.compilation = Compilation(self.metrics, plan_for(checkpoint, config))
        self.runner = ModelRunner(checkpoint, config, self.compilation.compiled, version)
        self.plan = self.runner.full_plan
        self.publication = Publication(config, self.runner, self.metrics, version_file, refused)
        self.metrics.watch_prefix_cache(self.runner.prefix_cache_stats,
                                        self.runner.prefix_cache_capacity_bytes)  # fmt: skip
        self.metrics.models_resident.set_function(lambda: self.runner.versions.resident)
        self.port = self.metrics_port = 0
        self._http: list[MetricsHTTPServer] = []  # /metrics (and probes), the probes' own
        self._recorder = MetricsRecorder(self.metrics)
        self._door_counted: dict[tuple[str | None, str], int] = {}  # in the metrics already
        self._door_lock = threading.Lock()
        self.readiness_port = 0
        self.batcher: Batcher | None = None
        self.front: Front | None = None

    async def start(self) -> None:
        """Bind /metrics, start the batcher, bind gRPC. Raises OSError (MetricsPortInUse
        included) if a port cannot be bound, having started nothing that outlives it."""
        c = self.config
        t = c.transport
        context = None
        if c.metrics_tls:
            if t.tls_cert is None or t.tls_key is None:
                raise ValueError("--metrics-tls needs --tls-cert and --tls-key")
            context = tls_context(t.tls_cert, t.tls_key, t.tls_client_ca)
        probes = Probes(self.readiness, self.liveness)
        self._beat = time.monotonic()
        self._heart = asyncio.get_running_loop().create_task(self._heartbeat(), name="heartbeat")
        self._http = [start_metrics_http(c.metrics_host, c.metrics_port, self.registry, context,
                                         probes, self._count_door_refusals)]  # fmt: skip
        self.metrics_port = self._http[0].port
        try:
            if c.readiness_port is not None:
                self._http.append(start_metrics_http(c.metrics_host, c.readiness_port, None,
                                                     None, probes))  # fmt: skip
                self.readiness_port = self._http[1].port
            await self._start_serving()
        except BaseException:
            self._stop_http()
            if self.batcher is not None:
                await self.batcher.stop()
            raise

    def _count_door_refusals(self) -> None:
        """Before a scrape (the metrics thread): the calls this process's transport refused
        before any handler since the last, into the metrics (`server.door.call_limits.Door` only
        counts them; a frontend worker reports its own with its transport counts)."""
        front = self.front
        if not isinstance(front, GrpcFront):
            return
        with self._door_lock:
            for key, total in front.door_refusals().items():
                new = total - self._door_counted.get(key, 0)
                if new > 0:
                    self._recorder.refused_before_handler(*key, new)
                    self._door_counted[key] = total

    def readiness(self) -> tuple[bool, str]:
        """/readyz: whether the server takes traffic, and why not (any thread)."""
        front = self.front
        return (False, "server is starting; retry shortly") if front is None else front.readiness()

    def liveness(self) -> tuple[bool, str]:
        """/healthz: whether the process works: its event loop has turned within
        LIVENESS_STALL_SECONDS, and its batcher runs (any thread)."""
        stalled = time.monotonic() - self._beat
        if stalled > LIVENESS_STALL_SECONDS:
            return False, f"the event loop has not turned for {stalled:.1f} s"
        if self.batcher is not None and self.batcher.broken is not None:
            return False, f"the batcher stopped: {self.batcher.broken!r}"
        return True, "ok"

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _stop_http(self) -> None:
        self._heart.cancel()
        for server in self._http:
            server.stop()

    async def _start_serving(self) -> None:
        c = self.config
        self.batcher = Batcher(self.runner, c.batcher, self.metrics)
        self.batcher.on_non_finite = self.publication.non_finite
        self.batcher.start()
        facts = ModelFacts(self.runner.config, self.runner.model.checkpoint.rows,
                           self.publication.info)  # fmt: skip
        admin = self.publication if c.transport.admin_rpcs else None
        workers = c.frontend_worker_count(available_cores())
        if workers:
            self.front = FrontendHub(c, workers, facts, self.batcher, self.metrics, admin)
        else:
            self.front = GrpcFront(facts, self.batcher, self._recorder, c,
                                   asyncio.get_running_loop(), admin)  # fmt: skip
        self.publication.attach(self.front)
        await self.front.start()
        self.port = self.front.port
        self.metrics.watch_transport(self.front.transport_counts)

    async def warm_up(self, abort: threading.Event | None = None) -> float:
        """Compile the shapes that hold any request (off the event loop), then report SERVING
        and watch for new versions (`compile_rest` compiles the other shapes); returns the
        seconds it took."""
        seconds = await self.compilation.warm_up(self.runner, abort)
        self.publication.watch()
        await self.front.serve()
        self.publication.verify_tables()
        return seconds

    def compile_rest(self, abort: threading.Event | None) -> None:
        """Compile the remaining planned shapes while serving (`Compilation.compile_rest`)."""
        self.compilation.compile_rest(self.runner, abort)

    async def _close_and_drain(self, timeout: float) -> bool:
        self.batcher.close()
        return await self.batcher.drain(timeout)

    async def shutdown(self, grace: float | None = None, lame_duck: bool = True) -> bool:
        """Stop within the grace period: first the lame duck (`lame_duck`, a server that was
        serving: not ready, still answering, for --drain-delay-seconds, within the grace
        period less DRAIN_RESERVE_SECONDS), then drain and stop; True if every accepted
        request finished within the grace period."""
        grace = self.config.grace_seconds if grace is None else grace
        began = time.monotonic()
        deadline = began + grace
        await self.publication.stop()
        if lame_duck:
            await self.front.lame_duck()
            delay = min(self.config.drain_delay_seconds, max(0.0, grace - DRAIN_RESERVE_SECONDS))
            log.info("lame duck: not ready, answering calls for %.1fs more", delay,
                     extra={"fields": {"event": "lame_duck", "seconds": delay}})  # fmt: skip
            await asyncio.sleep(max(0.0, began + delay - time.monotonic()))
        drained = await self.front.stop(deadline, self._close_and_drain)
        await self.batcher.stop(wait_for_device=drained)
        self._stop_http()
        return drained


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    # Before any checkpoint is mapped: a change to a mapped file is then signalled, not a fault
    # (server.engine.mapped_file); a fault that happens anyway prints the stack that faulted.
    install_lease_handler()
    faulthandler.enable()
    try:
        server = RankingServer(config)
    except (CheckpointError, ValueError) as e:  # nothing servable: one line, exit 2
        log.error("cannot serve: %s", e, extra={"fields": {"event": "unservable"}})
        return 2
    try:
        await server.start()
    except (OSError, ValueError) as e:  # a port taken, a TLS file missing: one line, exit 2
        log.error("cannot start: %s", e)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.publication.check_versions)
    log.info(
        "listening; warming up %d batch shapes",
        len(server.plan.shapes()),
        extra={
            "fields": {
                "event": "listening",
                "port": server.port,
                "metrics_port": server.metrics_port,
                "readiness_port": server.readiness_port,
            }
        },
    )
    abort_warmup = threading.Event()
    warm = loop.create_task(server.warm_up(abort_warmup))
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({warm, stopped}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    serving = False
    if not warm.done():  # SIGTERM during warm-up: stop compiling at the next shape
        abort_warmup.set()
        await asyncio.wait({warm})
    if warm.exception() is None and not stop.is_set():
        ready = {
            "event": "serving",
            "port": server.port,
            "metrics_port": server.metrics_port,
            "readiness_port": server.readiness_port,
            "model_version": server.publication.info.model_version,
            "warmup_seconds": round(warm.result(), 2),
            "shapes_ready": server.runner.engine.shapes_ready,
            "shapes": len(server.plan.shapes()),
            "devices": len(server.runner.engine.devices),
        }
        log.info("serving", extra={"fields": ready})
        server.compile_rest(abort_warmup)
        await stopped
        abort_warmup.set()  # stop compiling the remaining shapes, if any are left
        serving = True
    elif warm.exception() is not None and not isinstance(warm.exception(), WarmupAborted):
        log.error("warm-up failed; not serving", exc_info=warm.exception())
        exit_code = 1
    log.info("shutting down (grace %.1fs)", config.grace_seconds)
    began = time.monotonic()
    drained = await server.shutdown(lame_duck=serving)
    compiling = server.compilation.thread
    if compiling is not None:  # aborted above: it stops after the shape it is compiling
        left = max(1.0, config.grace_seconds - (time.monotonic() - began))
        await loop.run_in_executor(None, compiling.join, left)
        if compiling.is_alive():
            log.warning("still compiling after %.1fs; exiting without waiting", left)
            logging.shutdown()
            os._exit(exit_code)
    log.info("stopped", extra={"fields": {"drained": drained}})
    return exit_code
