"""The model runner: owns the parameters and the prefix slabs on the device, and one
executable per call shape.

Glossary: B chunk rows, R prefix rows, S history slots, C candidate slots per chunk, N slab
slots, A actions.

A batch (the pieces the batcher took; a piece is one chunk of one request's candidates) runs
as `model.prefix` splits the forward pass: prefix calls encode the user + history of each of
its requests whose prefix is not in the slab yet (`server.prefix_cache`: a request's later
chunks, and later requests with the same user and history window, find it there), then one
chunk call scores every chunk against its request's prefix. Each history bucket S has its own
slab, so a chunk attends over S + 1 prefix slots, not the model's full history.

`pack` is host work (hashing is already done: it looks up prefixes, pads chunks and the
prefixes to encode into numpy arrays of planned shapes) and runs on the event loop. `run`
blocks until the device has computed the scores and must be called from one thread at a time
(the batcher's device thread), in the order the batches were packed: a batch may read a
prefix the batch before it encodes. `warmup` compiles the shapes that hold any request (a
one-row prefix call and one chunk of each size, at the full history), so serving can begin;
`compile_rest` compiles the others while serving. `plan` offers only compiled shapes, so no
batch ever waits for a compilation; a shape outside the plan would be compiled on first use
and reported through `on_compile`, which is how that guarantee is measured.
"""

from __future__ import annotations

import functools
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.checkpoint import Checkpoint
from model.params import flatten
from model.prefix import (
    CandidateInputs,
    PrefixInputs,
    PrefixSlab,
    empty_slab,
    encode_prefixes,
    score_chunks,
    slab_slot_bytes,
    split_batch,
    write_prefixes,
)
from model.ranker import default_compute_dtype
from request.encoding import EncodedRequest
from request.layout import Piece, empty_batch, fill_candidates, fill_prefix
from server.buckets import BatchShape, BucketPlan
from server.prefix_cache import CacheStats, Entry, PrefixCache, prefix_key


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


# Compiled shapes whose estimated run is at most this long are run once before being offered
# (see `ModelRunner._compile`).
FIRST_RUN_SECONDS = 0.05


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
class PrefixCall:
    """One prefix call: R rows of user + history, each written to its slab slot."""

    shape: BatchShape  # (R, S, 0)
    inputs: PrefixInputs  # numpy [R, S]
    slots: np.ndarray  # int32 [R]; padding rows hold N (the write drops them)
    entries: tuple[Entry, ...]  # the entries it encodes


@dataclass(frozen=True, eq=False)
class PackedBatch:
    shape: BatchShape  # the chunk call's (B, S, C)
    chunks: CandidateInputs  # numpy [B, C]
    chunk_slots: np.ndarray  # int32 [B]: the slab slot of each chunk's prefix
    prefix_calls: tuple[PrefixCall, ...]  # prefixes this batch encodes before its chunks
    hits: tuple[tuple[Entry, EncodedRequest], ...]  # prefixes it reads that were there
    pieces: tuple[Piece, ...]  # chunk r holds pieces[r]; rows past len(pieces) are padding
    model: ServedModel  # the version that scores this batch

    @property
    def acquired(self) -> list[Entry]:
        """Every entry it pinned, once per `acquire` (released when it is done): each request
        acquired one, a miss (encoded by one of its prefix calls) or a hit."""
        return [e for call in self.prefix_calls for e in call.entries] + [e for e, _ in self.hits]

    @property
    def tokens(self) -> int:
        """Its work units, the ones admission prices queued pieces in: 1 + S + C per row, as
        if every chunk carried its prefix. A chunk's real device work is smaller (a prefix is
        encoded once), but the unit is per row, so it also carries the fixed cost of each
        call, which dominates small batches; priced by device tokens alone, a queue of
        one-chunk batches looked several times cheaper than it drained."""
        return self.shape.rows * self.shape.row_tokens


class ModelRunner:
    def __init__(
        self,
        checkpoint: Checkpoint,
        plan: BucketPlan,
        dtype: jnp.dtype | None = None,
        on_compile: Callable[[BatchShape, float], None] | None = None,
        version: str | None = None,
        prefix_cache_bytes: int = 0,
        batches_in_flight: int = 2,
    ):
        """`version`: what responses say scored them; default: the checkpoint's own.
        `prefix_cache_bytes`: device bytes of encoded prefixes kept for later requests, split
        evenly across history buckets; 0: a prefix serves only its own request's chunks.
        `batches_in_flight`: most batches packed and not yet run (the batcher's pipeline
        depth); every prefix they read stays pinned, so each slab has that many batches' rows
        of slots beyond the cache's."""
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
        # Every local device: parameters and prefix slabs replicated on each, calls split by
        # rows across them (see `_rows`).
        self.devices = jax.devices()
        self._mesh = Mesh(np.array(self.devices), ("rows",))
        self._replicated = NamedSharding(self._mesh, PartitionSpec())
        self.model = ServedModel(
            version or checkpoint.info.model_version, checkpoint,
            jax.device_put(checkpoint.state.params, self._replicated),
        )  # fmt: skip
        self._resident = weakref.WeakSet([self.model])  # versions whose parameters are alive
        self.num_parameters = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.params))
        self.reuse_prefixes = prefix_cache_bytes > 0
        pinned = batches_in_flight * plan.max_rows
        share = prefix_cache_bytes // len(plan.history_buckets)
        self._caches: dict[int, PrefixCache] = {}
        self._slabs: dict[int, PrefixSlab] = {}
        for s in plan.history_buckets:
            slot_bytes = slab_slot_bytes(config, s, self.dtype)
            self._caches[s] = PrefixCache(pinned + share // slot_bytes, slot_bytes)
            self._slabs[s] = self._empty_slab(s)

        def encode(params, slab, prefix, slots):
            return write_prefixes(slab, slots, encode_prefixes(params, config, self.dtype, prefix))

        def scores(params, slab, chunks, chunk_slot):  # [B, C, 2A]: logits, then sigmoids
            logits = score_chunks(params, config, self.dtype, slab, chunks, chunk_slot)
            return jnp.concatenate([logits, jax.nn.sigmoid(logits)], axis=-1)

        self._encode_fn, self._scores_fn = encode, scores
        self._executables: dict[BatchShape, Callable] = {}
        self._on_compile = on_compile
        # Device seconds per work unit (`PackedBatch.tokens`); measured by warmup() (`_measure`).
        self.seconds_per_token = 1e-6
        self.score_width = 2 * config.num_actions  # logits, then probabilities

    def _empty_slab(self, history: int) -> PrefixSlab:
        return jax.device_put(
            empty_slab(self.config, self._caches[history].slots, history, self.dtype),
            self._replicated,
        )

    def _rows(self, rows: int) -> NamedSharding:
        """How a call's rows are placed: split evenly across the devices when they divide
        the rows (each device scores its share against its own copy of the slab, with no
        traffic between devices), otherwise whole on every device."""
        n = len(self.devices)
        return (
            NamedSharding(self._mesh, PartitionSpec("rows"))
            if n > 1 and rows % n == 0
            else self._replicated
        )

    @property
    def checkpoint(self) -> Checkpoint:
        """The serving version's checkpoint."""
        return self.model.checkpoint

    @property
    def params(self) -> dict:
        return self.model.params

    def prefix_cache_stats(self) -> CacheStats:
        """Hits, misses and evictions so far, and the entries and bytes held, over all slabs
        (within-request reuse counts as hits too: a request's later chunks hit its prefix)."""
        stats = [c.stats() for c in self._caches.values()]
        return CacheStats(*(sum(x) for x in zip(*stats, strict=True)))

    @property
    def prefix_cache_capacity_bytes(self) -> int:
        return sum(c.slots * c.slot_bytes for c in self._caches.values())

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
        model = ServedModel(
            version, checkpoint, jax.device_put(checkpoint.state.params, self._replicated)
        )
        self._resident.add(model)
        # The executables take the parameters as an argument, and these have the serving
        # version's shapes and dtypes: every compiled shape serves them as it is. One prefix
        # and one chunk, of the smallest compiled shapes, prove it end to end, on a scratch
        # slab (the serving slabs belong to the device thread).
        pairs = [(p, c) for p in self._ready if p.is_prefix and p.rows == 1
                 for c in self._ready if not c.is_prefix and c.history == p.history]  # fmt: skip
        if pairs:
            prefix, chunk = min(pairs, key=lambda pc: (pc[0].history, pc[1].tokens))
            slab = self._executable(prefix)(
                model.params, self._empty_slab(prefix.history),
                split_batch(empty_batch(self.config, 1, prefix.history, 0))[0],
                np.zeros(1, np.int32),
            )  # fmt: skip
            chunks = split_batch(empty_batch(self.config, chunk.rows, 0, chunk.candidates))[1]
            slots = np.zeros(chunk.rows, np.int32)
            scores = np.asarray(self._executable(chunk)(model.params, slab, chunks, slots))
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
        """Compile the plan's essential shapes, those that hold any request
        (`BucketPlan.essential`); returns the seconds it took. From then on `plan` offers
        them, and the server can serve; `compile_rest` compiles the others. Before serving,
        two one-request batches are run to measure the device's seconds per token
        (`_measure`).

        Setting `abort` (e.g. on SIGTERM) stops after the shape being compiled, raising
        WarmupAborted, so a shutdown need not wait for the whole warm-up. `progress(done,
        total, shape, seconds)` is called after each shape (`total`: every planned shape).
        """
        start = time.perf_counter()
        self._compile(self.full_plan.essential(), abort, progress)
        if self._ready:
            self.seconds_per_token = max(
                self._measure(size) for size in (min(self.plan.candidate_buckets),
                                                 max(self.plan.candidate_buckets))
            )  # fmt: skip
        return time.perf_counter() - start

    def _measure(self, candidates: int) -> float:
        """Device seconds per work unit of a one-request batch of `candidates` (its prefix encoded,
        one chunk), through `pack` and `run` as a request goes: the estimate admission starts
        from. The larger of the smallest and the largest batch's is taken, so the fixed cost
        of a call (which dominates small batches) is not priced as if it were free; live
        batches correct it from there. Each measurement uses a user of its own (a miss)."""
        c, h = self.config, self.config.hash_config
        seconds = []
        for user in (1, 2):  # the second run is the one measured: the first pays one-time costs
            request = EncodedRequest(
                user_rows=np.full(h.num_user_hashes, user, np.int32),
                history_post_rows=np.ones((c.history_seq_len, h.num_item_hashes), np.int32),
                history_author_rows=np.ones((c.history_seq_len, h.num_author_hashes), np.int32),
                history_actions=np.zeros((c.history_seq_len, c.num_actions), np.uint8),
                history_surface=np.zeros(c.history_seq_len, np.int32),
                candidate_post_rows=np.ones((candidates, h.num_item_hashes), np.int32),
                candidate_author_rows=np.ones((candidates, h.num_author_hashes), np.int32),
                candidate_surface=np.zeros(candidates, np.int32),
            )
            packed = self.pack([Piece(request, 0, candidates)])
            began = time.perf_counter()
            self.run(packed)
            seconds.append((time.perf_counter() - began) / packed.tokens)
        return seconds[-1]

    def compile_rest(
        self,
        abort: threading.Event | None = None,
        progress: Callable[[int, int, BatchShape, float], None] | None = None,
    ) -> float:
        """Compile every other planned shape (any thread, while serving: `plan` offers each
        shape as soon as it is ready); returns the seconds it took. Full-history shapes come
        first, fewest rows first: they hold every request, and more rows per call is what
        raises throughput; the shorter history buckets only save attention work."""
        start = time.perf_counter()
        rest = [s for s in self.full_plan.shapes() if s not in self._ready]
        full = self.full_plan.history_buckets[-1]
        order = sorted(rest, key=lambda s: (s.history != full, s.rows, s.history, s.candidates))
        self._compile(order, abort, progress)
        return time.perf_counter() - start

    def _compile(self, shapes, abort, progress) -> None:
        """Compile shapes and run the cheap ones once: an executable's first run pays
        one-time costs (tens of milliseconds) that would otherwise land on a request, and on
        the device-rate estimate. A shape whose run is estimated above `FIRST_RUN_SECONDS` is
        not run: those costs are small beside its own (and its run would lengthen warm-up by
        seconds). They run on scratch slabs, since the serving slabs belong to the device
        thread; the scratch slabs are freed when this returns."""
        total = len(self.full_plan.shapes())
        scratch: dict[int, PrefixSlab] = {}
        for shape in shapes:
            if abort is not None and abort.is_set():
                raise WarmupAborted(f"warm-up aborted before shape {tuple(shape)}")
            began = time.perf_counter()
            executable = self._executable(shape)
            if self.seconds_per_token * shape.rows * shape.row_tokens <= FIRST_RUN_SECONDS:
                self._first_run(shape, executable, scratch)
            self._ready.add(shape)
            # Readiness only grows, so a batch composed under the previous plan still fits.
            self.plan = self.full_plan.with_ready(self._ready)
            if progress is not None:
                progress(len(self._ready), total, shape, time.perf_counter() - began)

    def _first_run(self, shape: BatchShape, executable, scratch: dict) -> None:
        """Run a compiled shape once, on the scratch slab of its history (made on first use)."""
        slab = scratch.get(shape.history) or self._empty_slab(shape.history)
        if shape.is_prefix:
            inputs = split_batch(empty_batch(self.config, shape.rows, shape.history, 0))[0]
            slots = np.full(shape.rows, slab.slots, np.int32)  # written nowhere
            slab = executable(self.params, slab, inputs, slots)
        else:
            chunks = split_batch(empty_batch(self.config, shape.rows, 0, shape.candidates))[1]
            jax.block_until_ready(
                executable(self.params, slab, chunks, np.zeros(shape.rows, np.int32))
            )
        scratch[shape.history] = jax.block_until_ready(slab)

    @property
    def shapes_ready(self) -> int:
        return len(self._ready)

    def _executable(self, shape: BatchShape) -> Callable:
        executable = self._executables.get(shape)
        if executable is None:
            start = time.perf_counter()
            slab = jax.tree.map(_spec, self._slabs[shape.history])
            rep, rows = self._replicated, self._rows(shape.rows)
            if shape.is_prefix:  # the slab is updated in place (donated)
                inputs = split_batch(empty_batch(self.config, shape.rows, shape.history, 0))[0]
                fn = jax.jit(self._encode_fn, in_shardings=(rep, rep, rows, rows),
                             out_shardings=rep, donate_argnums=1)  # fmt: skip
                lowered = fn.lower(self.params, slab, inputs, _int32(shape.rows))
            else:
                chunks = split_batch(empty_batch(self.config, shape.rows, 0, shape.candidates))[1]
                fn = jax.jit(self._scores_fn, in_shardings=(rep, rep, rows, rows),
                             out_shardings=rows)  # fmt: skip
                lowered = fn.lower(self.params, slab, chunks, _int32(shape.rows))
            executable = lowered.compile()
            self._executables[shape] = executable
            if self._on_compile is not None:
                self._on_compile(shape, time.perf_counter() - start)
        return executable

    def pack(self, pieces: Sequence[Piece], model: ServedModel | None = None) -> PackedBatch:
        """Look up the pieces' prefixes, pad their chunks and the prefixes to encode into the
        smallest planned shapes (host only), to be scored by `model` (default: the serving
        version). The batch pins its prefixes until `run` is done with it."""
        model = model or self.model
        shape = self.plan.shape_for(
            len(pieces),
            max(p.request.num_history for p in pieces),
            max(p.stop - p.start for p in pieces),
        )
        if shape is None:
            raise ValueError(f"{len(pieces)} pieces fit no planned batch shape")
        cache = self._caches[shape.history]
        batch = empty_batch(self.config, shape.rows, 0, shape.candidates)
        chunk_slots = np.zeros(shape.rows, np.int32)
        acquired: list[Entry] = []
        entry_of: dict[int, Entry] = {}
        misses: list[tuple[Entry, EncodedRequest]] = []
        hits: list[tuple[Entry, EncodedRequest]] = []
        try:
            for row, piece in enumerate(pieces):
                request = piece.request
                entry = entry_of.get(id(request))
                if entry is None:
                    key = prefix_key(model.version, request) if self.reuse_prefixes else request
                    entry, hit = cache.acquire(key)
                    acquired.append(entry)
                    entry_of[id(request)] = entry
                    (hits if hit else misses).append((entry, request))
                fill_candidates(batch, row, piece)
                chunk_slots[row] = entry.slot
        except BaseException:
            cache.release(acquired)
            raise
        return PackedBatch(
            shape, split_batch(batch)[1], chunk_slots,
            tuple(self._prefix_calls(shape.history, misses)), tuple(hits), tuple(pieces), model,
        )  # fmt: skip

    def _prefix_calls(self, history: int, todo) -> list[PrefixCall]:
        """Prefix calls that encode `todo` ((entry, request) pairs) into the slab of `history`."""
        calls, i = [], 0
        for shape in self.plan.prefix_calls(len(todo), history):
            part = todo[i : i + shape.rows]
            i += shape.rows
            batch = empty_batch(self.config, shape.rows, history, 0)
            slots = np.full(shape.rows, self._caches[history].slots, np.int32)  # drop padding
            for row, (entry, request) in enumerate(part):
                fill_prefix(batch, row, request)
                slots[row] = entry.slot
            calls.append(PrefixCall(shape, split_batch(batch)[0], slots,
                                    tuple(e for e, _ in part)))  # fmt: skip
        return calls

    def run(self, packed: PackedBatch) -> np.ndarray:
        """Scores float32 [B, C, 2A] of a packed batch: the A logits of each candidate, then
        their sigmoids (computed on the device, so the host only copies bytes). Encodes the
        batch's missing prefixes first. Blocks until the device is done."""
        history = packed.shape.history
        cache, params = self._caches[history], packed.model.params
        try:
            calls = list(packed.prefix_calls)
            # A prefix another batch was to encode, and did not (it failed): encode it here.
            own = {e for call in calls for e in call.entries}
            lost = set(cache.unwritten(e for e, _ in packed.hits if e not in own))
            if lost:
                todo = {e: r for e, r in packed.hits if e in lost}
                calls += self._prefix_calls(history, list(todo.items()))
            for call in calls:
                self._slabs[history] = self._executable(call.shape)(
                    params, self._slabs[history], call.inputs, call.slots
                )
                cache.written(call.entries)
            scores = self._executable(packed.shape)(
                params, self._slabs[history], packed.chunks, packed.chunk_slots
            )
            return np.asarray(scores)
        except BaseException:
            # The slab may be gone (a call that took it failed) or hold what nobody wrote:
            # start it afresh, and let every batch that reads a prefix encode it again.
            cache.forget()
            self._slabs[history] = self._empty_slab(history)
            raise
        finally:
            cache.release(packed.acquired)


def _spec(a: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)


@functools.cache
def _int32(n: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((n,), jnp.int32)


def _config_changes(old: Checkpoint, new: Checkpoint) -> str:
    """What differs between two versions' configs and tables, for the refusal message."""
    fields = [f"{k} {a} -> {b}" for k, a, b in zip(old.rows._fields, old.rows, new.rows, strict=True)
              if a != b]  # fmt: skip
    a, b = old.config.to_dict(), new.config.to_dict()
    fields += [
        f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    return ", ".join(fields) or "nothing visible"
