"""Assembles the service and runs it from start to stop.

start     bind /metrics; start the batcher; bind gRPC (health NOT_SERVING) through the front:
          in this process, or in frontend worker processes (`--frontend-workers`); both are a
          `server.transport.Front`, driven the same way
warm_up   compile the shapes that hold any request off the event loop, then the front serves;
          with --checkpoint-dir, start watching it for new versions (server.reload; SIGHUP)
compile_rest  compile the other planned shapes on a thread while serving; batches use each
          shape once it is ready (`compiled_all` logged at the end)
shutdown  the front drains (`server.lifecycle`, `server.transport`): refuse new requests
          (UNAVAILABLE), let queued and in-flight requests finish, hold late callers until
          they go quiet, stop; all within the grace period
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import faulthandler
import gc
import logging
import os
import signal
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from model.actions import ACTIONS
from model.checkpoint import Checkpoint, default_checkpoint_path, load_checkpoint, verify_file
from model.errors import CheckpointError
from model.tables import describe_tables
from server.batcher import Batcher
from server.buckets import BatchShape
from server.checkpoint_dir import ReloadState, VersionFile, file_version
from server.config import Limits, ServerConfig
from server.cores import available_cores
from server.engine import WarmupAborted, enable_compilation_cache
from server.errors import FailedPrecondition
from server.frontend_hub import FrontendHub
from server.mapped_file import install_lease_handler
from server.metrics import Metrics, MetricsRecorder
from server.metrics_http import MetricsHTTPServer, Probes, start_metrics_http, tls_context
from server.reload import VersionWatcher, load_best
from server.rpc import ranking_pb2 as pb
from server.runner import ModelRunner, placement_for
from server.service import ModelFacts
from server.transport import Front, GrpcFront
from server.versions import FailureWindow, ServedModel

log = logging.getLogger("phoenix.server")

# /healthz says the process is stuck when its event loop has not turned for this long (it
# turns every HEARTBEAT_SECONDS at least; nothing on it may block for more than milliseconds).
HEARTBEAT_SECONDS = 1.0
LIVENESS_STALL_SECONDS = 10.0
# Of the grace period, what the lame duck leaves at least for draining and stopping.
DRAIN_RESERVE_SECONDS = 2.0


def describe(runner: ModelRunner, limits: Limits, checkpoint_sha256: str | None = None
             ) -> pb.ModelInfo:  # fmt: skip
    """GetModelInfo's answer: the serving model version and the serving limits.
    `checkpoint_sha256`: the file's, once known (default: as loaded; "" until verified)."""
    c, m, h = runner.config, runner.config.model, runner.config.hash_config
    ckpt = runner.model.checkpoint
    info, rows = ckpt.info, ckpt.rows
    engine = runner.engine
    return pb.ModelInfo(
        model_version=runner.model.version,
        actions=list(ACTIONS),
        history_seq_len=c.history_seq_len,
        candidate_seq_len=c.candidate_seq_len,
        max_candidates_per_request=limits.max_candidates_per_request,
        max_history_events=limits.max_history_events,
        checkpoint_sha256=info.file_sha256 if checkpoint_sha256 is None else checkpoint_sha256,
        checkpoint_created_at=info.created_at,
        emb_size=c.emb_size,
        num_layers=m.num_layers,
        num_q_heads=m.num_q_heads,
        num_kv_heads=m.num_kv_heads,
        key_size=m.key_size,
        widening_factor=m.widening_factor,
        attn_output_multiplier=m.attn_output_multiplier,
        product_surface_vocab_size=c.product_surface_vocab_size,
        num_user_hashes=h.num_user_hashes,
        num_item_hashes=h.num_item_hashes,
        num_author_hashes=h.num_author_hashes,
        rope_positions=c.rope_positions,
        history_attention=c.history_attention,
        user_table_rows=rows.user,
        post_table_rows=rows.post,
        author_table_rows=rows.author,
        num_parameters=runner.model.checkpoint.num_parameters,
        compute_dtype=engine.dtype.name,
        backend=engine.backend,
        table_dtype=ckpt.table_dtype,
        table_placement=runner.placement,
        table_bytes=ckpt.table_bytes,
        table_sharding=engine.sharding,
    )


class RankingServer:
    """The model runner, the batcher, and the front that serves the gRPC port (one gRPC server
    in this process, or `frontend_workers` frontend processes); /metrics always from here."""

    def __init__(self, config: ServerConfig, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        if config.compilation_cache:
            enable_compilation_cache(config.compilation_cache.expanduser())
        self.refused: set[VersionFile] = set()
        self.version_file: VersionFile | None = None
        version = None
        # Tables placed on the device are read whole anyway, so they are checked against their
        # checksums now; host-placed ones after SERVING, in the background (`verify_tables`).
        on_device = lambda c: placement_for(c, config) == "device"  # noqa: E731
        if config.checkpoint_dir is not None:
            if config.checkpoint is not None:
                raise ValueError("--checkpoint and --checkpoint-dir exclude each other")
            self.version_file, checkpoint = load_best(
                config.checkpoint_dir, self.refused, self.metrics, on_device
            )
            version = str(self.version_file.number)
        else:
            path = config.checkpoint or default_checkpoint_path()
            self.version_file = file_version(path)  # before loading: a change meanwhile shows
            checkpoint = load_checkpoint(path, verify_tables=False)
            if on_device(checkpoint):
                checkpoint = load_checkpoint(path)
        self.verified: dict[str, str] = {}  # checkpoint path -> file sha256, checked later
        self.metrics.table_verification.set(1 if checkpoint.info.file_sha256 else 0)
        t = config.tables
        log.info("%s, placed on the %s (--table-placement %s, --table-sharding %s)",
                 describe_tables(checkpoint.rows, checkpoint.config.emb_size,
                                 checkpoint.table_dtype),
                 placement_for(checkpoint, config), t.table_placement, t.table_sharding,
                 extra={"fields": {"event": "tables", "table_bytes": checkpoint.table_bytes,
                                   "table_dtype": checkpoint.table_dtype,
                                   "placement": placement_for(checkpoint, config)}})  # fmt: skip
        self.runner = ModelRunner(checkpoint, config, self._compiled, version)
        self.plan = self.runner.full_plan
        self.metrics.watch_prefix_cache(self.runner.prefix_cache_stats,
                                        self.runner.prefix_cache_capacity_bytes)  # fmt: skip
        self.metrics.models_resident.set_function(lambda: self.runner.versions.resident)
        self.watcher: VersionWatcher | None = None
        self._failures: dict[int, FailureWindow] = {}  # per version: its non-finite batches
        self.port = self.metrics_port = 0
        self._http: list[MetricsHTTPServer] = []  # /metrics (and probes), the probes' own
        self._recorder = MetricsRecorder(self.metrics)
        self._door_counted: dict[tuple[str | None, str], int] = {}  # in the metrics already
        self._door_lock = threading.Lock()
        self.readiness_port = 0
        self.batcher: Batcher | None = None
        self.front: Front | None = None
        self.compile_thread: threading.Thread | None = None
        self._label_model()

    def _label_model(self) -> None:
        """phoenix_model_info: one series, the serving version's."""
        model, c, engine = self.runner.model, self.runner.config, self.runner.engine
        self.metrics.model_info.clear()
        ckpt = model.checkpoint
        self.metrics.model_info.labels(
            model.version, self.checkpoint_sha256(ckpt), engine.backend,
            engine.dtype.name, str(c.history_seq_len), str(c.emb_size),
            str(c.model.num_layers), ckpt.table_dtype, self.runner.placement,
            str(ckpt.table_bytes),
        ).set(1)  # fmt: skip

    def checkpoint_sha256(self, checkpoint: Checkpoint) -> str:
        """The file's sha256: known at load, or once `verify_tables` has read it ("" before)."""
        return checkpoint.info.file_sha256 or self.verified.get(checkpoint.info.path, "")

    def _swapped(self, model: ServedModel) -> None:
        """A new version serves: GetModelInfo and phoenix_model_info follow it, and the
        server takes traffic again if it was held for want of a servable version."""
        if model.checkpoint.info.file_sha256:
            self.metrics.table_verification.set(1)
        self.info = describe(self.runner, self.config.limits,
                             self.checkpoint_sha256(model.checkpoint))  # fmt: skip
        self._label_model()
        self.front.publish(self.info)
        if model.withdrawn is None:
            self.metrics.serving_withdrawn.set(0)
            self.front.hold(None)

    def withdraw(self, model: ServedModel, reason: str, kind: str) -> None:
        """On the loop: `model` may not serve any more (`kind`: changed, corrupt or
        non_finite; see phoenix_withdrawals_total). If it is the serving version, calls are
        refused UNAVAILABLE with the reason (health NOT_SERVING) until another version
        serves: the watcher looks for one at once (with --checkpoint-dir the best other
        valid version, or this file again once it changes; a corrupt or non-finite file is not
        tried again as it is)."""
        if not model.withdraw(reason):
            return
        self.metrics.withdrawals.labels(kind).inc()
        serving = model is self.runner.model
        log.error("model version %s withdrawn (%s): %s%s", model.version, kind, reason,
                  "" if serving else " (it was no longer serving)",
                  extra={"fields": {"event": "withdrawn", "version": model.version,
                                    "reason": kind, "path": model.checkpoint.info.path}})  # fmt: skip
        if self.watcher is not None and kind != "changed":
            self.watcher.refuse_serving(model)
        if not serving:
            return
        self.metrics.serving_withdrawn.set(1)
        self.front.hold(f"model version {model.version} withdrawn: {reason}")
        if self.watcher is not None:
            self.watcher.wake()

    def _non_finite(self, model: ServedModel) -> None:
        """A batch of `model` scored non-finite values (its calls answered DATA_LOSS): the
        third within a minute withdraws it (`server.versions.FailureWindow`)."""
        window = self._failures.setdefault(id(model), FailureWindow())
        if window.record(time.monotonic()):
            self.withdraw(model, "it scored non-finite values in 3 batches within a minute",
                          "non_finite")  # fmt: skip

    def _file_changed(self, model: ServedModel, reason: str) -> None:
        """Any thread: a version's mapped file changed (`server.mapped_file`)."""
        try:
            self._loop.call_soon_threadsafe(self.withdraw, model, reason, "changed")
        except RuntimeError:  # the server stopped meanwhile
            pass

    def verify_tables(self) -> threading.Thread | None:
        """Host-placed tables not yet checked: read the serving version's file once, on a
        thread of its own, against its recorded checksums (`model.checkpoint.verify_file`);
        then GetModelInfo and phoenix_model_info carry its sha256. A mismatch is logged as
        an error naming the tensor and sets phoenix_table_verification to -1."""
        model = self.runner.model
        checkpoint = model.checkpoint
        if self.checkpoint_sha256(checkpoint):
            return None
        loop = asyncio.get_running_loop()

        def run() -> None:
            started = time.monotonic()
            try:
                sha = verify_file(checkpoint.info.path)
            except (CheckpointError, OSError) as e:
                log.error("the serving tables failed verification: %s", e,
                          extra={"fields": {"event": "tables_corrupt"}})  # fmt: skip
                self.metrics.table_verification.set(-1)
                with contextlib.suppress(RuntimeError):  # RuntimeError: the server stopped
                    loop.call_soon_threadsafe(self.withdraw, model, f"its tables failed their "
                                              f"checksums ({e})", "corrupt")  # fmt: skip
                return
            log.info("tables verified in %.1fs (sha256 %s)", time.monotonic() - started, sha,
                     extra={"fields": {"event": "tables_verified"}})  # fmt: skip
            try:
                loop.call_soon_threadsafe(self._verified, checkpoint, sha)
            except RuntimeError:  # the server stopped meanwhile
                pass

        thread = threading.Thread(target=run, name="verify-tables", daemon=True)
        thread.start()
        return thread

    def _verified(self, checkpoint: Checkpoint, sha: str) -> None:
        self.verified[checkpoint.info.path] = sha
        self.metrics.table_verification.set(1)
        if self.runner.model.checkpoint is checkpoint:
            self._swapped(self.runner.model)

    def _compiled(self, shape, seconds: float) -> None:
        self.metrics.compilations.inc()
        self.metrics.compilation_seconds.inc(seconds)
        if shape not in self.plan.shapes():  # never planned: a bug, compiled on the hot path
            log.warning("compiled unplanned batch shape %s (%.2fs)", tuple(shape), seconds)

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
        before any handler since the last, into the metrics (`server.call_limits.Door` only
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
        self._loop = asyncio.get_running_loop()
        self.runner.versions.on_file_change = self._file_changed
        self.batcher = Batcher(self.runner, c.batcher, self.metrics)
        self.batcher.on_non_finite = self._non_finite
        self.batcher.start()
        ckpt = self.runner.model.checkpoint
        facts = ModelFacts(
            self.runner.config, ckpt.rows,
            describe(self.runner, c.limits, self.checkpoint_sha256(ckpt)),
        )  # fmt: skip
        self.info = facts.info
        admin = self if c.transport.admin_rpcs else None
        workers = c.frontend_worker_count(available_cores())
        if workers:
            self.front = FrontendHub(c, workers, facts, self.batcher, self.metrics, admin)
        else:
            self.front = GrpcFront(facts, self.batcher, self._recorder, c,
                                   asyncio.get_running_loop(), admin)  # fmt: skip
        await self.front.start()
        self.port = self.front.port
        self.metrics.watch_transport(self.front.transport_counts)

    async def warm_up(self, abort: threading.Event | None = None) -> float:
        """Compile the shapes that hold any request (off the event loop), then report SERVING
        (`compile_rest` compiles the others); returns the seconds it took."""
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(None, self.runner.warmup, abort, self._log_compiled)
        # JAX, the model and the compiled executables are hundreds of thousands of long-lived
        # objects; freezing them keeps the garbage collector from rescanning them (a full
        # collection took 100-200 ms) while requests churn short-lived ones.
        gc.collect()
        gc.freeze()
        self.metrics.warmup_seconds.set(seconds)
        c = self.config
        one_file = c.checkpoint_dir is None
        self.watcher = VersionWatcher(
            Path(self.version_file.path) if one_file else c.checkpoint_dir, c.poll_seconds,
            self.runner.versions, self.version_file, self.refused, self.metrics, self._swapped,
            one_file,
        )  # fmt: skip
        self.watcher.start()
        await self.front.serve()
        self.verify_tables()
        return seconds

    def compile_rest(self, abort: threading.Event | None) -> None:
        """Compile the remaining planned shapes on a thread of their own while serving; batches
        use each shape once it is ready. Setting `abort` stops it after the shape at hand;
        `serve` waits for that before the process exits (an interpreter that exits while a
        thread is inside XLA can crash on its way out)."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                seconds = self.runner.compile_rest(abort, self._log_compiled)
            except WarmupAborted:
                return
            except Exception:
                log.exception("compiling the remaining batch shapes failed; serving with %d",
                              self.runner.engine.shapes_ready)  # fmt: skip
                return
            try:
                loop.call_soon_threadsafe(self._compiled_all, seconds)
            except RuntimeError:  # the server stopped meanwhile; nothing left to report
                pass

        self.compile_thread = threading.Thread(target=run, name="compile-rest", daemon=True)
        self.compile_thread.start()

    def _compiled_all(self, seconds: float) -> None:
        gc.freeze()  # the new executables are long-lived too (see warm_up)
        shapes = len(self.plan.shapes())
        log.info("all %d batch shapes compiled (%.2fs after serving began)", shapes, seconds,
                 extra={"fields": {"event": "compiled_all", "shapes": shapes,
                                   "seconds": round(seconds, 2)}})  # fmt: skip

    def _log_compiled(self, done: int, total: int, shape: BatchShape, seconds: float) -> None:
        self.metrics.shapes_ready.set(done)
        log.info("compiled batch shape %d/%d %s in %.2fs", done, total, tuple(shape), seconds,
                 extra={"fields": {"event": "compiled", "shape": list(shape)}})  # fmt: skip

    async def reload(self, check_now: bool) -> ReloadState:
        """ReloadModel (`server.service.Admin`): check --checkpoint-dir now when asked, and
        report the serving version; FailedPrecondition without a --checkpoint-dir."""
        if self.config.checkpoint_dir is None:
            raise FailedPrecondition(
                "this server serves one checkpoint (--checkpoint): no --checkpoint-dir to reload"
            )
        if check_now:
            self.check_versions()
        model = self.runner.model
        busy = self.watcher is None or self.watcher.busy  # before warm-up: the first check is due
        return ReloadState(busy, _epoch_seconds(model.checkpoint.info.created_at), model.version)

    def check_versions(self) -> None:
        """SIGHUP: look at --checkpoint-dir (or the --checkpoint file) now."""
        if self.watcher is not None:
            self.watcher.wake()
        else:
            log.info("SIGHUP: the checkpoint is checked once warm-up is done")

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
        if self.watcher is not None:
            await self.watcher.stop()
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


def _epoch_seconds(iso_time: str) -> float:
    """An ISO-8601 time as seconds since the epoch; 0 if it does not parse."""
    try:
        return datetime.datetime.fromisoformat(iso_time).timestamp()
    except ValueError:
        return 0.0


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    # Before any checkpoint is mapped: a change to a mapped file is then signalled, not a fault
    # (server.mapped_file); a fault that happens anyway prints the stack that faulted.
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
    loop.add_signal_handler(signal.SIGHUP, server.check_versions)
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
            "model_version": server.info.model_version,
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
    compiling = server.compile_thread
    if compiling is not None:  # aborted above: it stops after the shape it is compiling
        left = max(1.0, config.grace_seconds - (time.monotonic() - began))
        await loop.run_in_executor(None, compiling.join, left)
        if compiling.is_alive():
            log.warning("still compiling after %.1fs; exiting without waiting", left)
            logging.shutdown()
            os._exit(exit_code)
    log.info("stopped", extra={"fields": {"drained": drained}})
    return exit_code
