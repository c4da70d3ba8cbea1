"""Packing: the pieces of a batch -> the padded host arrays of its device calls.

Glossary: B chunk rows, R prefix rows, S history slots, C candidate slots per chunk, N slab
slots.

A batch is the pieces the batcher took (a piece is one chunk of one request's candidates).
`Packer.pack` looks up each request's prefix in the prefix cache of its history bucket
(`server.engine.prefix_cache`: a request's later chunks, and later requests with the same user and
history window, find it there), pads the chunks into one chunk call of the smallest planned
shape, and the prefixes still to encode into prefix calls. It is host work only (numpy; the
arrays are `request.columns`'s), and runs on the event loop while the device computes the
batch before. The packed batch pins every cache entry it reads until the runner releases it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.config import PhoenixModelConfig
from request.columns import SCHEMA, CandidateInputs, EncodedRequest, PrefixInputs
from request.layout import Piece
from server.engine.prefix_cache import Entry, PrefixCache, prefix_key
from server.scheduling.buckets import BatchShape, BucketPlan


@dataclass(frozen=True, eq=False)
class PrefixCall:
    """One prefix call: R rows of user + history, each written to its slab slot."""

    shape: BatchShape  # (R, S, 0)
    inputs: PrefixInputs  # numpy [R, S]
    slots: np.ndarray  # int32 [R]; padding rows hold N (the write drops them)
    entries: tuple[Entry, ...]  # the entries it encodes
    tables: dict | None = None  # host placement: its gathered tables (ids in `inputs` index them)


@dataclass(frozen=True, eq=False)
class PackedBatch:
    shape: BatchShape  # the chunk call's (B, S, C)
    chunks: CandidateInputs  # numpy [B, C]
    chunk_slots: np.ndarray  # int32 [B]: the slab slot of each chunk's prefix
    prefix_calls: tuple[PrefixCall, ...]  # prefixes this batch encodes before its chunks
    hits: tuple[tuple[Entry, EncodedRequest], ...]  # prefixes it reads that were there
    pieces: tuple[Piece, ...]  # chunk r holds pieces[r]; rows past len(pieces) are padding
    model: Any  # the version that scores this batch (`server.engine.versions.ServedModel`)
    tables: dict | None = None  # host placement: the chunk call's gathered tables
    gathered_rows: int = 0  # host placement: rows gathered for it, over all its calls
    gather_seconds: float = 0.0  # host placement: the time gathering them took

    @property
    def acquired(self) -> list[Entry]:
        """Every entry it pinned, once per `acquire` (released when it is done): each request
        acquired one, a miss (encoded by one of its prefix calls) or a hit."""
        return [e for call in self.prefix_calls for e in call.entries] + [e for e, _ in self.hits]

    @property
    def work_units(self) -> int:
        """Its work units, the ones admission prices queued pieces in: 1 + S + C per row, as
        if every chunk carried its prefix. A chunk's real device work is smaller (a prefix is
        encoded once), but the unit is per row, so it also carries the fixed cost of each
        call, which dominates small batches; priced by device tokens alone, a queue of
        one-chunk batches looked several times cheaper than it drained."""
        return self.shape.rows * self.shape.row_units


class Packer:
    def __init__(self, config: PhoenixModelConfig, plan: Callable[[], BucketPlan],
                 caches: Mapping[int, PrefixCache], reuse_prefixes: bool):  # fmt: skip
        """`plan()`: the shapes compiled so far (they grow while serving). `caches`: the
        prefix cache of each history bucket. `reuse_prefixes`: share prefixes across requests
        (keyed by version and content); otherwise only a request's own chunks share one."""
        self._layout = SCHEMA.layout(config)
        self._plan = plan
        self.caches = caches
        self.reuse_prefixes = reuse_prefixes

    def _key(self, version: str, request: EncodedRequest) -> Hashable:
        return prefix_key(version, request) if self.reuse_prefixes else request

    def pack(self, pieces: Sequence[Piece], model) -> PackedBatch:
        """Look up the pieces' prefixes, pad their chunks and the prefixes to encode into the
        smallest planned shapes, to be scored by `model`. The batch pins its prefixes until
        the runner releases them."""
        plan = self._plan()
        shape = plan.shape_for(
            len(pieces),
            max(p.request.num_history for p in pieces),
            max(p.stop - p.start for p in pieces),
        )
        if shape is None:
            raise ValueError(f"{len(pieces)} pieces fit no planned batch shape")
        cache = self.caches[shape.history]
        chunks = SCHEMA.empty_candidates(self._layout, shape.rows, shape.candidates)
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
                    entry, hit = cache.acquire(self._key(model.version, request))
                    acquired.append(entry)
                    entry_of[id(request)] = entry
                    (hits if hit else misses).append((entry, request))
                SCHEMA.fill_candidates(chunks, row, request, piece.start, piece.stop)
                chunk_slots[row] = entry.slot
        except BaseException:
            cache.release(acquired)
            raise
        return PackedBatch(
            shape, chunks, chunk_slots, tuple(self.prefix_calls(shape.history, misses, plan)),
            tuple(hits), tuple(pieces), model,
        )  # fmt: skip

    def prefix_calls(self, history: int, todo: Sequence[tuple[Entry, EncodedRequest]],
                     plan: BucketPlan | None = None) -> list[PrefixCall]:  # fmt: skip
        """Prefix calls that encode `todo` ((entry, request) pairs) into the slab of `history`."""
        plan = plan or self._plan()
        calls, i = [], 0
        for shape in plan.prefix_calls(len(todo), history):
            part = todo[i : i + shape.rows]
            i += shape.rows
            inputs = SCHEMA.empty_prefix(self._layout, shape.rows, history)
            slots = np.full(shape.rows, self.caches[history].slots, np.int32)  # drop padding
            for row, (entry, request) in enumerate(part):
                SCHEMA.fill_prefix(inputs, row, request)
                slots[row] = entry.slot
            calls.append(PrefixCall(shape, inputs, slots, tuple(e for e, _ in part)))
        return calls
