"""Batch shapes: the fixed set of padded shapes the runner compiles during warm-up.

The runner (`server.engine.runner`, `model.prefix`) computes a batch in two kinds of call:
  prefix calls `[R rows, S history slots]` (`BatchShape(R, S, 0)`): the user + history of
      requests whose prefix is not cached yet, encoded once into the slab of history size S;
  a chunk call `[B rows, S, C candidate slots]`: B chunks (a chunk is a window of up to C of
      one request's candidates) scored against their requests' prefixes in the S slab.
With right-anchored positions every candidate sits at `history_end` and candidates never see
each other, so neither C nor the split of a request into windows changes a logit, and any
S >= the request's history works because positions are computed for the model's full
`history_seq_len`. Shapes are therefore free to choose for speed: B (or R), S and C each come
from a short list of buckets, and a chunk shape is compiled only if B * C <=
`max_batch_candidates` (the batcher never forms larger ones). The batcher composes batches of
pieces (one piece = one chunk); the prefix calls a batch needs follow from its pieces.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple


class BatchShape(NamedTuple):
    rows: int  # B
    history: int  # S
    candidates: int  # C

    @property
    def row_units(self) -> int:
        """Work units of one row, what admission prices work in: its sequence positions,
        1 (user) + S + C, as if the row carried its own prefix (see
        `server.engine.packing.PackedBatch.work_units`)."""
        return 1 + self.history + self.candidates

    @property
    def is_prefix(self) -> bool:
        """A prefix call's shape (no candidate slots)."""
        return self.candidates == 0

    @property
    def tokens(self) -> int:
        """Padded tokens one call of this shape computes: R x (1 + S) for a prefix call,
        B x C for a chunk call."""
        return self.rows * (1 + self.history if self.is_prefix else self.candidates)


# A chunk costs a little beyond its candidate slots (reading its prefix's keys and values, one
# more row of every projection): counted as this many tokens when choosing a chunk size.
CHUNK_OVERHEAD_TOKENS = 8


def powers_of_two_up_to(n: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including n (n itself even if not a power of two)."""
    out = [1 << i for i in range(n.bit_length()) if 1 << i < n]
    return (*out, n)


@dataclass(frozen=True)
class BucketPlan:
    row_buckets: tuple[int, ...]  # batch rows B, ascending; the last is --max-batch-size
    history_buckets: tuple[int, ...]  # S, ascending; the last is the model's history_seq_len
    candidate_buckets: tuple[int, ...]  # C, ascending; the last is the window size
    max_batch_candidates: int  # upper bound on B * C
    # The shapes compiled so far, while the rest compile in the background (see
    # `server.engine.runner.ModelRunner.warmup`); None: every shape of the plan.
    ready: frozenset[BatchShape] | None = None

    def __post_init__(self) -> None:
        for name in ("row_buckets", "history_buckets", "candidate_buckets"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be distinct positive ascending ints, got {values}")
        if self.row_buckets[0] != 1:
            raise ValueError(
                f"row_buckets must start at 1 (a lone request runs alone), got {self.row_buckets}"
            )
        if self.max_batch_candidates < self.candidate_buckets[-1]:
            raise ValueError(
                f"max_batch_candidates ({self.max_batch_candidates}) must be at least the "
                f"largest candidate bucket ({self.candidate_buckets[-1]})"
            )

    @property
    def max_rows(self) -> int:
        return self.row_buckets[-1]

    @property
    def window(self) -> int:
        """Most candidates of one request in one row: requests are split into such windows."""
        return self.candidate_buckets[-1]

    def shape_for(self, rows: int, history: int, candidates: int) -> BatchShape | None:
        """The smallest compiled shape that holds this content, or None if none does."""
        r = _ceil_bucket(self.row_buckets, rows)
        s = _ceil_bucket(self.history_buckets, history)
        c = _ceil_bucket(self.candidate_buckets, candidates)
        if r is None or s is None or c is None or r * c > self.max_batch_candidates:
            return None
        shape = BatchShape(r, s, c)
        if self.ready is None or (shape in self.ready and self._prefix_ready(s)):
            return shape
        holds = [x for x in self.ready if x.rows >= r and x.history >= s and x.candidates >= c
                 and not x.is_prefix and self._prefix_ready(x.history)]  # fmt: skip
        return min(holds, key=lambda x: (x.rows * x.row_units, x), default=None)

    def _prefix_ready(self, history: int) -> bool:
        """Some prefix call of this history bucket is compiled."""
        return self.ready is None or any(
            BatchShape(r, history, 0) in self.ready for r in self.row_buckets
        )

    def window_for(self, num_candidates: int, num_history: int) -> int:
        """The chunk size to split a request into: the candidate bucket that scores it in the
        fewest padded tokens, each chunk costing its slots plus `CHUNK_OVERHEAD_TOKENS` (the
        prefix is encoded once whatever the chunking); ties go to the larger chunk."""

        def tokens(window: int) -> tuple[float, int]:
            shape = self.shape_for(1, min(num_history, self.history_buckets[-1]), window)
            if shape is None:
                return math.inf, 0
            return -(-num_candidates // window) * (window + CHUNK_OVERHEAD_TOKENS), -window

        return min(self.candidate_buckets, key=tokens)

    def prefix_calls(self, rows: int, history: int) -> list[BatchShape]:
        """Prefix-call shapes that encode `rows` prefixes into the slab of history bucket
        `history`: the fewest calls of compiled shapes, largest first, padding only the last."""
        sizes = sorted(r for r in self.row_buckets
                       if self.ready is None or BatchShape(r, history, 0) in self.ready)  # fmt: skip
        calls = []
        while rows > 0:
            fits = [r for r in sizes if r >= rows]
            r = fits[0] if fits else sizes[-1]
            calls.append(BatchShape(r, history, 0))
            rows -= r
        return calls

    def essential(self) -> list[BatchShape]:
        """The shapes that hold any request, one chunk per batch: a one-row prefix call of the
        full history, and one chunk of each candidate bucket against that history. Serving
        can start once these are compiled."""
        s = self.history_buckets[-1]
        return [BatchShape(1, s, 0)] + [BatchShape(1, s, c) for c in self.candidate_buckets]

    def with_ready(self, shapes) -> BucketPlan:
        """This plan restricted to `shapes` (compiled so far); all of them: the full plan."""
        ready = frozenset(shapes)
        return dataclasses.replace(self, ready=None if ready >= set(self.shapes()) else ready)

    def shapes(self) -> list[BatchShape]:
        """Every shape `shape_for` and `prefix_calls` can return: what warm-up compiles."""
        chunks = [
            BatchShape(r, s, c)
            for r, s, c in itertools.product(
                self.row_buckets, self.history_buckets, self.candidate_buckets
            )
            if r * c <= self.max_batch_candidates
        ]
        prefixes = [BatchShape(r, s, 0) for s in self.history_buckets for r in self.row_buckets]
        return prefixes + chunks


def _ceil_bucket(buckets: tuple[int, ...], n: int) -> int | None:
    i = bisect.bisect_left(buckets, max(n, 1))
    return buckets[i] if i < len(buckets) else None


def make_plan(
    history_seq_len: int,
    max_batch_size: int,
    candidate_buckets: tuple[int, ...],
    history_buckets: tuple[int, ...] | None = None,
    max_batch_candidates: int | None = None,
) -> BucketPlan:
    """A plan for a model: history buckets end at its `history_seq_len` (default S/4 and S)."""
    if history_buckets is None:
        history_buckets = (max(1, history_seq_len // 4), history_seq_len)
    history = tuple(sorted({min(s, history_seq_len) for s in history_buckets} | {history_seq_len}))
    return BucketPlan(
        row_buckets=powers_of_two_up_to(max_batch_size),
        history_buckets=history,
        candidate_buckets=tuple(candidate_buckets),
        max_batch_candidates=max_batch_candidates or max(candidate_buckets) * 16,
    )
