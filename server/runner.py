"""The model runner: owns the parameters on the device and one executable per batch shape.

Glossary: B batch rows, S history slots, C candidate slots per row, A actions.

`pack` is host work (hashing is already done; this pads pieces into a numpy batch of a bucket
shape) and is safe to call from any thread. `run` blocks until the device has computed the
logits and must be called from one thread at a time (the batcher's device thread). Every shape
of the plan is compiled ahead of time by `warmup`; a shape outside the plan would be compiled
on first use and reported through `on_compile`, which is how the no-compilation-after-warm-up
guarantee is measured.

Extension point: candidate isolation makes user+history keys/values identical for every
candidate of a request. A runner that encodes each request's prefix once and scores candidate
windows against it only needs different `pack`/`run` bodies; the batcher is unaffected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from model.checkpoint import Checkpoint
from model.ranker import RankingBatch, default_compute_dtype, make_forward
from request.layout import Piece, empty_batch, pack_rows
from server.buckets import BatchShape, BucketPlan


def enable_compilation_cache(directory: str) -> None:
    """Persist compiled executables in `directory`, so a restart's warm-up is mostly reads."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class WarmupAborted(RuntimeError):
    """Warm-up was asked to stop before every shape was compiled."""


class UnservableModelError(ValueError):
    """A checkpoint whose scores would depend on how the server lays out candidates."""


@dataclass(frozen=True, eq=False)
class PackedBatch:
    shape: BatchShape
    batch: RankingBatch  # numpy arrays of `shape`
    pieces: tuple[Piece, ...]  # row r holds pieces[r]; rows past len(pieces) are padding


class ModelRunner:
    def __init__(
        self,
        checkpoint: Checkpoint,
        plan: BucketPlan,
        dtype: jnp.dtype | None = None,
        on_compile: Callable[[BatchShape, float], None] | None = None,
    ):
        config = checkpoint.config
        if not config.candidates_isolated_across_windows:
            raise UnservableModelError(
                f"{checkpoint.info.path}: rope_positions={config.rope_positions!r} gives each "
                "candidate slot its own position, so a candidate's score would depend on the "
                "window the server puts it in; only 'right_anchored' models can be served"
            )
        if plan.history_buckets[-1] != config.history_seq_len:
            raise ValueError(
                f"the largest history bucket ({plan.history_buckets[-1]}) must equal the "
                f"model's history_seq_len ({config.history_seq_len})"
            )
        self.checkpoint = checkpoint
        self.config = config
        self.plan = plan
        self.dtype = jnp.dtype(dtype or default_compute_dtype())
        self.backend = jax.default_backend()
        self.params = jax.device_put(checkpoint.state.params)
        self.num_parameters = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.params))
        forward = make_forward(config, checkpoint.rows, self.dtype).apply

        def scores(params, batch):  # [B, C, 2A]: logits, then sigmoid(logits), float32
            logits = forward(params, batch)
            return jnp.concatenate([logits, jax.nn.sigmoid(logits)], axis=-1)

        self._forward = jax.jit(scores)
        self._executables: dict[BatchShape, Callable] = {}
        self._on_compile = on_compile
        # Device seconds per padded token; measured by warmup() on the largest shape.
        self.seconds_per_token = 1e-6
        self.score_width = 2 * config.num_actions  # logits, then probabilities

    def warmup(
        self,
        abort: threading.Event | None = None,
        progress: Callable[[int, int, BatchShape, float], None] | None = None,
    ) -> float:
        """Compile (and run once) every shape of the plan; returns the seconds it took.

        Setting `abort` (e.g. on SIGTERM) stops after the shape being compiled, raising
        WarmupAborted, so a shutdown need not wait for the whole warm-up. `progress(done,
        total, shape, seconds)` is called after each shape.
        """
        start = time.perf_counter()
        shapes = self.plan.shapes()
        for done, shape in enumerate(shapes, 1):
            if abort is not None and abort.is_set():
                raise WarmupAborted(f"warm-up aborted before shape {tuple(shape)}")
            began = time.perf_counter()
            out = self._executable(shape)(self.params, empty_batch(self.config, *shape))
            jax.block_until_ready(out)
            if progress is not None:
                progress(done, len(shapes), shape, time.perf_counter() - began)
        if shapes:
            largest = max(shapes, key=lambda s: s.rows * s.row_tokens)
            batch = empty_batch(self.config, *largest)
            began = time.perf_counter()
            jax.block_until_ready(self._executable(largest)(self.params, batch))
            seconds = time.perf_counter() - began
            self.seconds_per_token = seconds / (largest.rows * largest.row_tokens)
        return time.perf_counter() - start

    def _executable(self, shape: BatchShape) -> Callable:
        executable = self._executables.get(shape)
        if executable is None:
            start = time.perf_counter()
            spec = empty_batch(self.config, *shape)
            executable = self._forward.lower(self.params, spec).compile()
            self._executables[shape] = executable
            if self._on_compile is not None:
                self._on_compile(shape, time.perf_counter() - start)
        return executable

    def pack(self, pieces: Sequence[Piece]) -> PackedBatch:
        """Pad pieces into the smallest planned shape that holds them (host only)."""
        shape = self.plan.shape_for(
            len(pieces),
            max(p.request.num_history for p in pieces),
            max(p.stop - p.start for p in pieces),
        )
        if shape is None:
            raise ValueError(f"{len(pieces)} pieces fit no planned batch shape")
        batch = pack_rows(self.config, pieces, *shape)
        return PackedBatch(shape, batch, tuple(pieces))

    def run(self, packed: PackedBatch) -> np.ndarray:
        """Scores float32 [B, C, 2A] of a packed batch: the A logits of each candidate, then
        their sigmoids (computed on the device, so the host only copies bytes). Blocks until
        the device is done."""
        return np.asarray(self._executable(packed.shape)(self.params, packed.batch))
