"""The engine: the devices, one compiled executable per call shape, and the prefix slabs.

Glossary: B chunk rows, R prefix rows, S history slots, C candidate slots per chunk, N slab
slots, A actions.

The engine computes; it knows nothing of requests or caches. It runs the two kinds of call
`model.prefix` splits the forward pass into (the JetStream `Engine` / vLLM model-runner role):

  `encode(shape, params, inputs, slots)`   a prefix call: R rows of user + history encoded
      into slots of the slab of history bucket S (device memory that outlives the call);
  `score(shape, params, chunks, slots)`    a chunk call: B chunks of C candidates scored
      against the slab slots holding their prefixes -> `Scores`: float32 [B, C, 2A] (logits,
      then sigmoids, computed on the device so the host only copies bytes) and bool [B, C],
      whether each candidate's logits are finite (reduced on the device, in the same call, so
      the host never scans the scores to know that none it answers is NaN or infinite).

Each history bucket S has its own slab, so a chunk attends over 1 + S prefix slots, not the
model's full history. Both calls block until the device is done and must come from one thread
at a time (the batcher's device thread): a slab is donated to, and replaced by, each prefix
call.

Compilation: `compile(shapes)` compiles shapes and, when a shape's run is estimated cheap
(`FIRST_RUN_SECONDS`), runs it once on a scratch slab, so the first request that uses it does
not pay XLA's one-time costs. `plan` offers only compiled shapes, so no batch ever waits for
a compilation; a shape outside the plan would be compiled on first use and reported through
`on_compile`, which is how that guarantee is measured.

Devices: dense parameters and slabs are replicated on every local device; a call's rows are
split across the devices when they divide evenly (each scores its share against its own copy
of the slab, with no traffic between devices), otherwise every device runs the whole call.

Tables (`server.engine.placement`): with device placement they are replicated like the rest, or,
with `sharding="rows"`, split by rows over the devices (padded with zero rows no id hashes
to, up to a multiple of the device count); XLA partitions the lookup of a row-sharded table
as a masked local gather on each device and an all-reduce of the [.., D] results, so only
embeddings cross devices, never a table. With host placement the parameters on the device
are the dense ones; every call takes its gathered tables (`tables=`), of a fixed shape per
call shape (`gathered`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.config import PhoenixModelConfig
from model.prefix import PrefixSlab, empty_slab, encode_prefixes, score_chunks, write_prefixes
from model.tables import TABLE_MODULE
from request.columns import SCHEMA
from server.scheduling.batch_result import Scores
from server.scheduling.buckets import BatchShape, BucketPlan

log = logging.getLogger("phoenix.server")


# Compiled shapes whose estimated run is at most this long are run once before being offered.
FIRST_RUN_SECONDS = 0.05

Progress = Callable[[int, int, BatchShape, float], None]  # (ready, total, shape, seconds)


class WarmupAborted(RuntimeError):
    """Compilation was asked to stop before every shape was compiled."""


def enable_compilation_cache(directory: str | os.PathLike) -> None:
    """Persist compiled executables in `directory` (created if absent), so a restart's
    warm-up is mostly reads. A directory that cannot be created leaves the cache off."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("compilation cache off: cannot create %s (%s)", directory, e.strerror)
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    log.info("compilation cache: %s", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Engine:
    def __init__(
        self,
        config: PhoenixModelConfig,
        plan: BucketPlan,
        dtype: jnp.dtype,
        slab_slots: Mapping[int, int],
        params,
        on_compile: Callable[[BatchShape, float], None] | None = None,
        sharding: str = "replicated",
        gathered: Callable[[BatchShape], Mapping[str, tuple]] | None = None,
    ):
        """`slab_slots`: slots of the slab of each history bucket of `plan`. `params`: a
        parameter tree (host or device) of the shapes and dtypes every executable is compiled
        for; every version served must match it (`server.engine.versions`). `sharding`: "rows"
        splits the tables by rows over the devices. `gathered`: host placement: the shape
        and dtype of each gathered table of a call shape ({table: ((G, D), dtype)}); `params`
        then has no tables."""
        self.config = config
        self.full_plan = plan  # every shape to compile
        self._ready: set[BatchShape] = set()
        self.plan = plan.with_ready(())  # the shapes compiled so far: what batches may use
        self.dtype = jnp.dtype(dtype)
        self.backend = jax.default_backend()
        self.devices = jax.devices()
        self._mesh = Mesh(np.array(self.devices), ("rows",))
        self._replicated = NamedSharding(self._mesh, PartitionSpec())
        self._layout = SCHEMA.layout(config)
        self.sharding = sharding if len(self.devices) > 1 else "replicated"
        self._gathered = gathered
        self._params_spec = jax.tree.map(_spec, self.put(params, abstract=True))
        self._slab_slots = dict(slab_slots)
        self._slabs = {s: self._empty_slab(s) for s in plan.history_buckets}
        self._executables: dict[BatchShape, Callable] = {}
        self._on_compile = on_compile
        # Device seconds per work unit (`server.engine.packing.PackedBatch.work_units`); the runner
        # measures it once warm-up has compiled a shape (`server.engine.runner`).
        self.seconds_per_unit = 1e-6

        def encode(params, slab, prefix, slots):
            return write_prefixes(slab, slots, encode_prefixes(params, config, self.dtype, prefix))

        def scores(params, slab, chunks, chunk_slot):
            logits = score_chunks(params, config, self.dtype, slab, chunks, chunk_slot)
            finite = jnp.isfinite(logits).all(axis=-1)  # [B, C]: a cheap check, on the device
            return jnp.concatenate([logits, jax.nn.sigmoid(logits)], axis=-1), finite

        self._encode_fn, self._scores_fn = encode, scores

    # -- placement -----------------------------------------------------------------------

    def put(self, params, abstract: bool = False) -> dict:
        """A parameter tree on the devices: replicated, its tables split by rows when
        sharding is "rows". abstract: only the shapes, dtypes and shardings it would have."""
        out = {}
        for module, leaves in params.items():
            out[module] = {}
            for name, value in leaves.items():
                if module == TABLE_MODULE and self.sharding == "rows":
                    out[module][name] = self._put_rows(value, abstract)
                elif abstract:
                    out[module][name] = jax.ShapeDtypeStruct(value.shape, value.dtype,
                                                             sharding=self._replicated)  # fmt: skip
                else:
                    out[module][name] = jax.device_put(self._owned(value), self._replicated)
        return out

    def _owned(self, value: np.ndarray) -> np.ndarray:
        """`value` as memory of its own on the CPU backend, whose device_put aliases a host
        array instead of copying it: a parameter aliasing the mapped checkpoint would fault
        (SIGBUS, the process killed) the moment the file is truncated while serving."""
        return np.array(value) if self.backend == "cpu" else value

    def _put_rows(self, value: np.ndarray, abstract: bool):
        """A table (or its scales) split by rows over the devices, padded with zero rows."""
        n, per = len(self.devices), -(-value.shape[0] // len(self.devices))
        shape = (per * n, *value.shape[1:])
        sharding = NamedSharding(self._mesh, PartitionSpec("rows", *[None] * (value.ndim - 1)))
        if abstract:
            return jax.ShapeDtypeStruct(shape, value.dtype, sharding=sharding)

        def rows(index):  # one device's share of the rows, from the (mapped) host table
            start, stop = index[0].start or 0, index[0].stop or shape[0]
            part = np.zeros((stop - start, *value.shape[1:]), value.dtype)
            real = value[start : min(stop, value.shape[0])]
            part[: len(real)] = real
            return part

        return jax.make_array_from_callback(shape, sharding, rows)

    def with_tables(self, shape: BatchShape, params, tables=None) -> dict:
        """The parameters a call of `shape` takes: `params` as they are with device
        placement; with host placement, `params` with the call's gathered tables (zeros,
        all padding, when `tables` is None)."""
        if self._gathered is None:
            return params
        if tables is None:
            tables = {t: np.zeros(s, d) for t, (s, d) in self._gathered(shape).items()}
        return {**params, TABLE_MODULE: tables}

    def _empty_slab(self, history: int) -> PrefixSlab:
        slab = empty_slab(self.config, self._slab_slots[history], history, self.dtype)
        return jax.device_put(slab, self._replicated)

    def _rows(self, rows: int) -> NamedSharding:
        """How a call's rows are placed (see the module docstring)."""
        n = len(self.devices)
        split = n > 1 and rows % n == 0
        return NamedSharding(self._mesh, PartitionSpec("rows")) if split else self._replicated

    # -- compilation ---------------------------------------------------------------------

    @property
    def shapes_ready(self) -> int:
        return len(self._ready)

    def is_ready(self, shape: BatchShape) -> bool:
        return shape in self._ready

    def compile(self, shapes: Iterable[BatchShape], params, abort: threading.Event | None = None,
                progress: Progress | None = None) -> None:  # fmt: skip
        """Compile shapes, in order, and offer each in `plan` once ready. Setting `abort`
        stops before the next shape (WarmupAborted). Shapes estimated to run within
        `FIRST_RUN_SECONDS` are run once first with `params` (on scratch slabs, freed on
        return; the serving slabs belong to the device thread)."""
        total = len(self.full_plan.shapes())
        scratch: dict[int, PrefixSlab] = {}
        for shape in shapes:
            if abort is not None and abort.is_set():
                raise WarmupAborted(f"warm-up aborted before shape {tuple(shape)}")
            began = time.perf_counter()
            executable = self.executable(shape)
            if self.seconds_per_unit * shape.rows * shape.row_units <= FIRST_RUN_SECONDS:
                self._first_run(shape, executable, params, scratch)
            self._ready.add(shape)
            # Readiness only grows, so a batch composed under the previous plan still fits.
            self.plan = self.full_plan.with_ready(self._ready)
            if progress is not None:
                progress(len(self._ready), total, shape, time.perf_counter() - began)

    def _first_run(self, shape: BatchShape, executable, params, scratch: dict) -> None:
        """Run a compiled shape once, on the scratch slab of its history (made on first use)."""
        slab = scratch.get(shape.history) or self._empty_slab(shape.history)
        params = self.with_tables(shape, params)
        if shape.is_prefix:
            inputs = SCHEMA.empty_prefix(self._layout, shape.rows, shape.history)
            slots = np.full(shape.rows, slab.slots, np.int32)  # written nowhere
            slab = executable(params, slab, inputs, slots)
        else:
            chunks = SCHEMA.empty_candidates(self._layout, shape.rows, shape.candidates)
            jax.block_until_ready(executable(params, slab, chunks, np.zeros(shape.rows, np.int32)))
        scratch[shape.history] = jax.block_until_ready(slab)

    def executable(self, shape: BatchShape) -> Callable:
        """The compiled call of `shape` (compiled now if it is not yet: `on_compile`)."""
        executable = self._executables.get(shape)
        if executable is None:
            start = time.perf_counter()
            slab = jax.tree.map(_spec, self._slabs[shape.history])
            rep, rows = self._replicated, self._rows(shape.rows)
            params = self._params_spec
            if self._gathered is not None:
                params = {**params, TABLE_MODULE: {
                    t: jax.ShapeDtypeStruct(s, d, sharding=rep)
                    for t, (s, d) in self._gathered(shape).items()}}  # fmt: skip
            rep_params = jax.tree.map(lambda a: a.sharding, params)
            if shape.is_prefix:  # the slab is updated in place (donated)
                inputs = SCHEMA.empty_prefix(self._layout, shape.rows, shape.history)
                fn = jax.jit(self._encode_fn, in_shardings=(rep_params, rep, rows, rows),
                             out_shardings=rep, donate_argnums=1)  # fmt: skip
                lowered = fn.lower(params, slab, inputs, _int32(shape.rows))
            else:
                chunks = SCHEMA.empty_candidates(self._layout, shape.rows, shape.candidates)
                fn = jax.jit(self._scores_fn, in_shardings=(rep_params, rep, rows, rows),
                             out_shardings=(rows, rows))  # fmt: skip
                lowered = fn.lower(params, slab, chunks, _int32(shape.rows))
            executable = lowered.compile()
            self._executables[shape] = executable
            if self._on_compile is not None:
                self._on_compile(shape, time.perf_counter() - start)
        return executable

    # -- running -------------------------------------------------------------------------

    def encode(self, shape: BatchShape, params, inputs, slots: np.ndarray, tables=None) -> None:
        """Run a prefix call: `inputs` (PrefixInputs [R, S]) into slab slots int32 [R] (a slot
        of N or more drops its row: padding). `tables`: its gathered tables (host placement)."""
        s, params = shape.history, self.with_tables(shape, params, tables)
        self._slabs[s] = self.executable(shape)(params, self._slabs[s], inputs, slots)

    def score(self, shape: BatchShape, params, chunks, chunk_slots: np.ndarray,
              tables=None) -> Scores:  # fmt: skip
        """Run a chunk call: the scores of `chunks` (CandidateInputs [B, C]) against the slab
        slots int32 [B] of their prefixes, and whether each candidate's logits are all
        finite. Blocks until the device is done."""
        s, params = shape.history, self.with_tables(shape, params, tables)
        values, finite = self.executable(shape)(params, self._slabs[s], chunks, chunk_slots)
        return Scores(np.asarray(values), np.asarray(finite))

    def reset_slab(self, history: int) -> None:
        """Start the slab of `history` afresh (after a failed call may have taken it)."""
        self._slabs[history] = self._empty_slab(history)

    def check(self, params) -> Scores | None:
        """Scores of one padding prefix and one padding chunk, of the smallest compiled
        shapes, under `params`, on a scratch slab (any thread): proves a version runs end to
        end on the executables already compiled. None if no pair of shapes is compiled yet."""
        ready = set(self._ready)
        pairs = [(p, c) for p in ready if p.is_prefix and p.rows == 1
                 for c in ready if not c.is_prefix and c.history == p.history]  # fmt: skip
        if not pairs:
            return None
        prefix, chunk = min(pairs, key=lambda pc: (pc[0].history, pc[1].tokens))
        slab = self.executable(prefix)(
            self.with_tables(prefix, params), self._empty_slab(prefix.history),
            SCHEMA.empty_prefix(self._layout, 1, prefix.history), np.zeros(1, np.int32),
        )  # fmt: skip
        chunks = SCHEMA.empty_candidates(self._layout, chunk.rows, chunk.candidates)
        slots = np.zeros(chunk.rows, np.int32)
        values, finite = self.executable(chunk)(
            self.with_tables(chunk, params), slab, chunks, slots
        )
        return Scores(np.asarray(values), np.asarray(finite))


def _spec(a: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)


@functools.cache
def _int32(n: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((n,), jnp.int32)
