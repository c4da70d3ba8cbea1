"""The model runner: owns the parameters on the device and one executable per batch shape.

Glossary: B batch rows, S history slots, C candidate slots per row, A actions.

`pack` is host work (hashing is already done; this pads pieces into a numpy batch of a bucket
shape) and is safe to call from any thread. `run` blocks until the device has computed the
logits and must be called from one thread at a time (the batcher's device thread). `warmup`
compiles the shapes that hold any request (one row of the full history and each candidate
bucket), so serving can begin; `compile_rest` compiles the others while serving. `plan` offers
only compiled shapes, so no batch ever waits for a compilation; a shape outside the plan would
be compiled on first use and reported through `on_compile`, which is how that guarantee is
measured.

Extension point: candidate isolation makes user+history keys/values identical for every
candidate of a request. A runner that encodes each request's prefix once and scores candidate
windows against it only needs different `pack`/`run` bodies; the batcher is unaffected.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from model.checkpoint import Checkpoint
from model.params import flatten
from model.ranker import RankingBatch, default_compute_dtype, make_forward
from request.layout import Piece, empty_batch, pack_rows
from server.buckets import BatchShape, BucketPlan


def enable_compilation_cache(directory: str | os.PathLike) -> None:
    """Persist compiled executables in `directory` (created if absent), so a restart's
    warm-up is mostly reads. A directory that cannot be created leaves the cache off."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logging.getLogger("phoenix.server").warning(
            "compilation cache off: cannot create %s (%s)", directory, e.strerror
        )
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    logging.getLogger("phoenix.server").info("compilation cache: %s", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class WarmupAborted(RuntimeError):
    """Warm-up was asked to stop before every shape was compiled."""


class UnservableModelError(ValueError):
    """A checkpoint whose scores would depend on how the server lays out candidates."""


class IncompatibleVersionError(ValueError):
    """A new version whose architecture or tables differ from the serving one's: requests
    already hashed and executables already compiled would not fit it (a restart serves it)."""


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One version of the model, resident on the device."""

    version: str  # what responses' model_version say
    checkpoint: Checkpoint
    params: dict  # the parameter tree on the device


@dataclass(frozen=True, eq=False)
class PackedBatch:
    shape: BatchShape
    batch: RankingBatch  # numpy arrays of `shape`
    pieces: tuple[Piece, ...]  # row r holds pieces[r]; rows past len(pieces) are padding
    model: ServedModel  # the version that scores this batch


class ModelRunner:
    def __init__(
        self,
        checkpoint: Checkpoint,
        plan: BucketPlan,
        dtype: jnp.dtype | None = None,
        on_compile: Callable[[BatchShape, float], None] | None = None,
        version: str | None = None,
    ):
        """`version`: what responses say scored them; default: the checkpoint's own."""
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
        self.config = config
        self.full_plan = plan  # every shape to compile
        self._ready: set[BatchShape] = set()
        self.plan = plan.with_ready(())  # the shapes compiled so far: what batches may use
        self.dtype = jnp.dtype(dtype or default_compute_dtype())
        self.backend = jax.default_backend()
        self.model = ServedModel(
            version or checkpoint.info.model_version, checkpoint,
            jax.device_put(checkpoint.state.params),
        )  # fmt: skip
        self._resident = weakref.WeakSet([self.model])  # versions whose parameters are alive
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

    @property
    def checkpoint(self) -> Checkpoint:
        """The serving version's checkpoint."""
        return self.model.checkpoint

    @property
    def params(self) -> dict:
        return self.model.params

    def prepare(self, checkpoint: Checkpoint, version: str) -> ServedModel:
        """Put a new version on the device beside the serving one, ready to swap in (any
        thread). Its config and table sizes must equal the serving version's, so that every
        compiled executable serves it unchanged (no compilation) and requests hashed for one
        version are valid for the other; its parameters must be finite, and so must its scores
        of one batch. Raises IncompatibleVersionError or ValueError otherwise."""
        serving = self.model.checkpoint
        if checkpoint.config != serving.config or checkpoint.rows != serving.rows:
            changed = _config_changes(serving, checkpoint)
            raise IncompatibleVersionError(
                f"version {version} changes {changed}; a config change needs a restart"
            )
        for name, value in flatten(checkpoint.state.params).items():
            if not np.isfinite(value).all():
                raise ValueError(f"version {version}: {name} has non-finite values")
        model = ServedModel(version, checkpoint, jax.device_put(checkpoint.state.params))
        self._resident.add(model)
        # The executables take the parameters as an argument, and these have the serving
        # version's shapes and dtypes: every compiled shape serves them as it is. One batch,
        # of the smallest shape, proves it end to end without taking the device for long.
        shape = min(self._executables, key=lambda s: s.rows * s.row_tokens, default=None)
        if shape is not None:
            batch = empty_batch(self.config, *shape)
            scores = np.asarray(self._executables[shape](model.params, batch))
            if not np.isfinite(scores).all():
                raise ValueError(f"version {version} scores non-finite values")
        return model

    @property
    def resident_models(self) -> int:
        """Versions whose parameters are alive: the serving one, and for a while after a swap
        the one it replaced (until its last batch and pinned request are done)."""
        return len(self._resident)

    def swap(self, model: ServedModel) -> ServedModel:
        """Serve `model` from the next packed batch on; returns the version it replaces.
        Call on the event loop that packs batches (so the swap falls between batches)."""
        previous, self.model = self.model, model
        return previous

    def warmup(
        self,
        abort: threading.Event | None = None,
        progress: Callable[[int, int, BatchShape, float], None] | None = None,
    ) -> float:
        """Compile (and run once) the plan's essential shapes, those that hold any request
        (`BucketPlan.essential`); returns the seconds it took. From then on `plan` offers
        them, and the server can serve; `compile_rest` compiles the others.

        Setting `abort` (e.g. on SIGTERM) stops after the shape being compiled, raising
        WarmupAborted, so a shutdown need not wait for the whole warm-up. `progress(done,
        total, shape, seconds)` is called after each shape (`total`: every planned shape).
        """
        start = time.perf_counter()
        self._compile(self.full_plan.essential(), abort, progress)
        if self._ready:
            largest = max(self._ready, key=lambda s: s.rows * s.row_tokens)
            batch = empty_batch(self.config, *largest)
            began = time.perf_counter()
            jax.block_until_ready(self._executable(largest)(self.params, batch))
            seconds = time.perf_counter() - began
            self.seconds_per_token = seconds / (largest.rows * largest.row_tokens)
        return time.perf_counter() - start

    def compile_rest(
        self,
        abort: threading.Event | None = None,
        progress: Callable[[int, int, BatchShape, float], None] | None = None,
    ) -> float:
        """Compile every other planned shape, fewest rows first (any thread, while serving:
        `plan` offers each shape as soon as it is ready); returns the seconds it took."""
        start = time.perf_counter()
        rest = [s for s in self.full_plan.shapes() if s not in self._ready]
        self._compile(sorted(rest, key=lambda s: (s.rows, s.row_tokens)), abort, progress)
        return time.perf_counter() - start

    def _compile(self, shapes, abort, progress) -> None:
        total = len(self.full_plan.shapes())
        for shape in shapes:
            if abort is not None and abort.is_set():
                raise WarmupAborted(f"warm-up aborted before shape {tuple(shape)}")
            began = time.perf_counter()
            out = self._executable(shape)(self.params, empty_batch(self.config, *shape))
            jax.block_until_ready(out)
            self._ready.add(shape)
            # Readiness only grows, so a batch composed under the previous plan still fits.
            self.plan = self.full_plan.with_ready(self._ready)
            if progress is not None:
                progress(len(self._ready), total, shape, time.perf_counter() - began)

    @property
    def shapes_ready(self) -> int:
        return len(self._ready)

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

    def pack(self, pieces: Sequence[Piece], model: ServedModel | None = None) -> PackedBatch:
        """Pad pieces into the smallest planned shape that holds them (host only), to be
        scored by `model` (default: the serving version)."""
        shape = self.plan.shape_for(
            len(pieces),
            max(p.request.num_history for p in pieces),
            max(p.stop - p.start for p in pieces),
        )
        if shape is None:
            raise ValueError(f"{len(pieces)} pieces fit no planned batch shape")
        batch = pack_rows(self.config, pieces, *shape)
        return PackedBatch(shape, batch, tuple(pieces), model or self.model)

    def run(self, packed: PackedBatch) -> np.ndarray:
        """Scores float32 [B, C, 2A] of a packed batch: the A logits of each candidate, then
        their sigmoids (computed on the device, so the host only copies bytes). Blocks until
        the device is done."""
        return np.asarray(self._executable(packed.shape)(packed.model.params, packed.batch))


def _config_changes(old: Checkpoint, new: Checkpoint) -> str:
    """What differs between two versions' configs and tables, for the refusal message."""
    fields = [f"{k} {a} -> {b}" for k, a, b in zip(old.rows._fields, old.rows, new.rows, strict=True)
              if a != b]  # fmt: skip
    a, b = old.config.to_dict(), new.config.to_dict()
    fields += [
        f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    return ", ".join(fields) or "nothing visible"
