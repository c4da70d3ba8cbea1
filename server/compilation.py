"""Compilation of the planned batch shapes: those that hold any request before serving
(`warm_up`, off the event loop), the others on a thread while serving (`compile_rest`);
batches use each shape once it is ready. Every compilation is counted, and one of a shape the
plan did not hold (compiled on the hot path: a bug) is logged."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

from server.engine.device import WarmupAborted
from server.engine.runner import ModelRunner
from server.operations.metrics import Metrics
from server.scheduling.buckets import BatchShape, BucketPlan

log = logging.getLogger("phoenix.server")


class Compilation:
    def __init__(self, metrics: Metrics, plan: BucketPlan):
        self.metrics = metrics
        self.plan = plan
        self.thread: threading.Thread | None = None  # compile_rest's, while it runs

    def compiled(self, shape: BatchShape, seconds: float) -> None:
        """The runner's `on_compile` (any thread)."""
        self.metrics.compilations.inc()
        self.metrics.compilation_seconds.inc(seconds)
        if shape not in self.plan.shapes():  # never planned: a bug, compiled on the hot path
            log.warning("compiled unplanned batch shape %s (%.2fs)", tuple(shape), seconds)

    async def warm_up(self, runner: ModelRunner, abort: threading.Event | None) -> float:
        """Compile the shapes that hold any request, off the event loop; returns the seconds
        it took. WarmupAborted once `abort` is set."""
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(None, runner.warmup, abort, self._progress)
        # JAX, the model and the compiled executables are hundreds of thousands of long-lived
        # objects; freezing them keeps the garbage collector from rescanning them (a full
        # collection took 100-200 ms) while requests churn short-lived ones.
        gc.collect()
        gc.freeze()
        self.metrics.warmup_seconds.set(seconds)
        return seconds

    def compile_rest(self, runner: ModelRunner, abort: threading.Event | None) -> None:
        """Compile the remaining planned shapes on a thread of their own while serving.
        Setting `abort` stops it after the shape at hand; the process waits for `thread`
        before it exits (an interpreter that exits while a thread is inside XLA can crash on
        its way out)."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                seconds = runner.compile_rest(abort, self._progress)
            except WarmupAborted:
                return
            except Exception:
                log.exception("compiling the remaining batch shapes failed; serving with %d",
                              runner.engine.shapes_ready)  # fmt: skip
                return
            try:
                loop.call_soon_threadsafe(self._compiled_all, seconds)
            except RuntimeError:  # the server stopped meanwhile; nothing left to report
                pass

        self.thread = threading.Thread(target=run, name="compile-rest", daemon=True)
        self.thread.start()

    def _compiled_all(self, seconds: float) -> None:
        gc.freeze()  # the new executables are long-lived too (see warm_up)
        shapes = len(self.plan.shapes())
        log.info("all %d batch shapes compiled (%.2fs after serving began)", shapes, seconds,
                 extra={"fields": {"event": "compiled_all", "shapes": shapes,
                                   "seconds": round(seconds, 2)}})  # fmt: skip

    def _progress(self, done: int, total: int, shape: BatchShape, seconds: float) -> None:
        self.metrics.shapes_ready.set(done)
        log.info("compiled batch shape %d/%d %s in %.2fs", done, total, tuple(shape), seconds,
                 extra={"fields": {"event": "compiled", "shape": list(shape)}})  # fmt: skip
