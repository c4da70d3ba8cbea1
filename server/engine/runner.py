"""The model runner: what the batcher drives, composed of the engine, packing and versions.

    server.engine.device    devices, compiled call shapes, prefix slabs: compile and run
    server.engine.packing   the pieces of a batch -> padded host arrays, prefix cache lookups
    server.engine.versions  the serving version, a new one prepared beside it, the swap

A batch runs as `model.prefix` splits the forward pass: `pack` (host work, on the event loop)
looks up each request's prefix and pads the chunks; `run` (the batcher's device thread, one
batch at a time, in packing order: a batch may read a prefix the batch before it encodes)
encodes the missing prefixes, then scores every chunk against its request's prefix.

`warmup` compiles the shapes that hold any request (a one-row prefix call and one chunk of
each size, at the full history) and measures the device's seconds per work unit, so serving
can begin; `compile_rest` compiles the others while serving.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from model.checkpoint import Checkpoint
from model.network import default_compute_dtype
from model.prefix import slab_slot_bytes
from model.tables import dense
from request.columns import SCHEMA
from request.hashing import hashes_per_table
from request.layout import Piece
from server.config import ServerConfig
from server.engine.device import Engine, Progress
from server.engine.packing import PackedBatch, Packer, PrefixCall
from server.engine.placement import (
    HostTables,
    choose,
    device_memory_bytes,
    gathered_dtype,
    gathered_spec,
)
from server.engine.prefix_cache import PrefixCache
from server.engine.versions import ServedModel, Versions
from server.operations.metrics import CacheStats
from server.scheduling.batch_result import Scores, Unwanted
from server.scheduling.buckets import BatchShape, BucketPlan, make_plan

__all__ = ["ModelRunner", "UnservableModelError", "Unwanted", "placement_for", "plan_for"]


def _check_wanted(wanted: Callable[[], bool] | None) -> None:
    if wanted is not None and not wanted():
        raise Unwanted("every call waiting for this batch has ended")


class UnservableModelError(ValueError):
    """A checkpoint whose scores would depend on how the server lays out candidates."""


def plan_for(checkpoint: Checkpoint, config: ServerConfig) -> BucketPlan:
    """The compiled shapes for a model under `config.shapes`."""
    s = config.shapes
    return make_plan(checkpoint.config.history_seq_len, s.max_batch_size, s.candidate_buckets,
                     s.history_buckets, s.max_batch_candidates)  # fmt: skip


def placement_for(checkpoint: Checkpoint, config: ServerConfig) -> str:
    """ "device" or "host": where `checkpoint`'s tables live under `config.tables` (split by
    rows over the local devices, each holds its share)."""
    import jax

    t = config.tables
    return choose(t.table_placement, checkpoint.table_bytes, device_memory_bytes(),
                  t.table_device_share, len(jax.devices()), t.table_sharding)  # fmt: skip


def _gathered(tables: HostTables, call: PrefixCall) -> tuple[PrefixCall, int]:
    """A prefix call with its rows gathered from host-placed `tables`, and how many."""
    g = tables.gather(call.shape, call.inputs)
    return dataclasses.replace(call, inputs=g.inputs, tables=g.tables), g.rows


class ModelRunner:
    def __init__(
        self,
        checkpoint: Checkpoint,
        config: ServerConfig,
        on_compile: Callable[[BatchShape, float], None] | None = None,
        version: str | None = None,
    ):
        """`version`: what responses say scored them; default: the checkpoint's own. From
        `config`: the shapes, the dtype, the prefix cache's bytes (split evenly across
        history buckets; 0: a prefix serves only its own request's chunks) and the batches in
        flight (`batcher.pipeline_depth`: every prefix they read stays pinned, so each slab
        has that many batches' rows of slots beyond the cache's)."""
        model_config = checkpoint.config
        if not model_config.candidates_isolated_across_windows:
            raise UnservableModelError(
                f"{checkpoint.info.path}: rope_positions={model_config.rope_positions!r} gives "
                "each candidate slot its own position, so a candidate's score would depend on "
                "the window the server puts it in; only 'right_anchored' models can be served"
            )
        plan = plan_for(checkpoint, config)
        dtype = jnp.dtype(config.dtype or default_compute_dtype())
        t = config.tables
        self.placement = placement_for(checkpoint, config)
        if self.placement == "host" and t.table_sharding == "rows":
            if t.table_placement == "auto":
                raise ValueError(
                    f"--table-sharding rows: {checkpoint.table_bytes:,} bytes of tables over "
                    f"the devices still take more than --table-device-share "
                    f"{t.table_device_share} of one device's memory; serve them from the host "
                    "(--table-sharding replicated, or --table-placement host)"
                )
            raise ValueError("--table-sharding rows splits tables on the devices; it needs "
                             "--table-placement device or auto")  # fmt: skip
        pinned = config.batcher.pipeline_depth * plan.max_rows
        share = config.prefix_cache_bytes // len(plan.history_buckets)
        self.caches = {}
        for s in plan.history_buckets:
            slot_bytes = slab_slot_bytes(model_config, s, dtype)
            self.caches[s] = PrefixCache(pinned + share // slot_bytes, slot_bytes)
        self.config = model_config
        host = self.placement == "host"
        params, gathered = checkpoint.state.params, None
        if host:
            params = dense(params)
            # The shapes every version's gathered tables have (not a version's own tables:
            # an old version's mapping must not outlive it).
            gathered = functools.partial(
                gathered_spec, hashes=hashes_per_table(model_config),
                width=model_config.emb_size, dtype=gathered_dtype(checkpoint.table_dtype),
            )  # fmt: skip
        self.engine = Engine(model_config, plan, dtype, {s: c.slots for s, c in self.caches.items()},
                             params, on_compile, t.table_sharding, gathered)  # fmt: skip
        self.packer = Packer(model_config, lambda: self.engine.plan, self.caches,
                             reuse_prefixes=config.prefix_cache_bytes > 0)  # fmt: skip
        self.versions = Versions(self.engine, checkpoint, version or checkpoint.info.model_version,
                                 host)  # fmt: skip
        self.score_width = 2 * model_config.num_actions  # logits, then probabilities

    # -- what the batcher reads (server.scheduling.batcher.Runner) ----------------------------------

    @property
    def plan(self) -> BucketPlan:
        """The shapes compiled so far: what batches may use."""
        return self.engine.plan

    @property
    def full_plan(self) -> BucketPlan:
        return self.engine.full_plan

    @property
    def model(self) -> ServedModel:
        """The serving version."""
        return self.versions.serving

    @property
    def seconds_per_unit(self) -> float:
        return self.engine.seconds_per_unit

    @property
    def gathers(self) -> bool:
        """Whether packed batches have a host gather step (`gather`): host placement."""
        return self.placement == "host"

    def pack(self, pieces: Sequence[Piece], model: ServedModel | None = None) -> PackedBatch:
        """Pad the pieces for `model` (default: the serving version); host only."""
        return self.packer.pack(pieces, model or self.model)

    def gather(self, packed: PackedBatch) -> PackedBatch:
        """Host placement: the batch with each call's table rows gathered from host memory
        (`server.engine.placement`); any thread. Device placement: the batch as it is."""
        tables = packed.model.host_tables
        if tables is None or packed.tables is not None:
            return packed
        began = time.perf_counter()
        calls = [_gathered(tables, call) for call in packed.prefix_calls]
        g = tables.gather(packed.shape, packed.chunks)
        return dataclasses.replace(
            packed, prefix_calls=tuple(call for call, _ in calls), chunks=g.inputs,
            tables=g.tables, gathered_rows=sum(rows for _, rows in calls) + g.rows,
            gather_seconds=time.perf_counter() - began,
        )  # fmt: skip

    def run(self, packed: PackedBatch, wanted: Callable[[], bool] | None = None) -> Scores:
        """The `Scores` of a packed batch (float32 [B, C, 2A]: the A logits of each
        candidate, then their sigmoids; and which candidates' logits are finite). Encodes the
        batch's missing prefixes first. `wanted()`, asked before each device call, says
        whether any call still waits for the batch: when none does, the rest is not run
        (`Unwanted`), so at most the device call already running finishes late. Blocks until
        the device is done; releases the batch's prefixes whatever happens."""
        history = packed.shape.history
        cache, model = self.caches[history], packed.model
        try:
            packed = self.gather(packed)
            calls = list(packed.prefix_calls)
            # A prefix another batch was to encode, and did not (it failed, or nobody wanted
            # it any more): encode it here.
            own = {e for call in calls for e in call.entries}
            lost = set(cache.unwritten(e for e, _ in packed.hits if e not in own))
            if lost:
                todo = {e: r for e, r in packed.hits if e in lost}
                calls += self.packer.prefix_calls(history, list(todo.items()))
            for call in calls:
                _check_wanted(wanted)
                if model.host_tables is not None and call.tables is None:  # one of the lost
                    call, _ = _gathered(model.host_tables, call)
                self.engine.encode(call.shape, model.params, call.inputs, call.slots, call.tables)
                cache.written(call.entries)
            _check_wanted(wanted)
            return self.engine.score(packed.shape, model.params, packed.chunks,
                                     packed.chunk_slots, packed.tables)  # fmt: skip
        except Unwanted:
            raise  # the slab is whole: what was written stays, the rest is encoded by whoever needs it
        except BaseException:
            # The slab may be gone (a call that took it failed) or hold what nobody wrote:
            # start it afresh, and let every batch that reads a prefix encode it again.
            cache.forget()
            self.engine.reset_slab(history)
            raise
        finally:
            cache.release(packed.acquired)

    # -- start-up ------------------------------------------------------------------------

    def warmup(self, abort: threading.Event | None = None, progress: Progress | None = None
               ) -> float:  # fmt: skip
        """Compile the plan's essential shapes (`BucketPlan.essential`), then measure the
        device's seconds per work unit with two one-request batches; returns the seconds it
        took. From then on `plan` offers them and the server can serve. Setting `abort`
        (SIGTERM) stops after the shape being compiled (`server.engine.device.WarmupAborted`)."""
        start = time.perf_counter()
        self.engine.compile(self.full_plan.essential(), self.model.params, abort, progress)
        if self.engine.shapes_ready:
            buckets = self.plan.candidate_buckets
            self.engine.seconds_per_unit = max(self._measure(min(buckets)),
                                               self._measure(max(buckets)))  # fmt: skip
        return time.perf_counter() - start

    def _measure(self, candidates: int) -> float:
        """Device seconds per work unit of a one-request batch of `candidates` (its prefix
        encoded, one chunk), through `pack` and `run` as a request goes: the estimate
        admission starts from. The larger of the smallest and the largest batch's is taken,
        so the fixed cost of a call (which dominates small batches) is not priced as if it
        were free; live batches correct it from there. Each run is a user of its own (a
        miss); the second is the one measured, the first pays one-time costs."""
        layout, n = SCHEMA.layout(self.config), self.config.history_seq_len
        seconds = []
        for user in (1, 2):
            request = SCHEMA.filled(layout, n, candidates, row=user)
            packed = self.pack([Piece(request, 0, candidates)])
            began = time.perf_counter()
            self.run(packed)
            seconds.append((time.perf_counter() - began) / packed.work_units)
        return seconds[-1]

    def compile_rest(self, abort: threading.Event | None = None, progress: Progress | None = None
                     ) -> float:  # fmt: skip
        """Compile every other planned shape (any thread, while serving: `plan` offers each
        as soon as it is ready); returns the seconds it took. Full-history shapes come first,
        fewest rows first: they hold every request, and more rows per call is what raises
        throughput; the shorter history buckets only save attention work."""
        start = time.perf_counter()
        rest = [s for s in self.full_plan.shapes() if not self.engine.is_ready(s)]
        full = self.full_plan.history_buckets[-1]
        order = sorted(rest, key=lambda s: (s.history != full, s.rows, s.history, s.candidates))
        self.engine.compile(order, self.model.params, abort, progress)
        return time.perf_counter() - start

    # -- what the server reports ---------------------------------------------------------

    def prefix_cache_stats(self) -> CacheStats:
        """Hits, misses and evictions so far, and the entries and bytes held, over all slabs
        (within-request reuse counts as hits too: a request's later chunks hit its prefix)."""
        stats = [c.stats() for c in self.caches.values()]
        return CacheStats(*(sum(x) for x in zip(*stats, strict=True)))

    @property
    def prefix_cache_capacity_bytes(self) -> int:
        return sum(c.slots * c.slot_bytes for c in self.caches.values())
