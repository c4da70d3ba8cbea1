"""Batch shapes: the fixed set of padded shapes the runner compiles during warm-up.

A batch is `[B rows, S history slots, C candidate slots]`. Each row holds one request's user
and history and a window of up to C of its candidates. With right-anchored positions every
candidate sits at `history_end` and candidates never see each other, so neither C nor the
split of a request into windows changes a logit, and any S >= the request's history works
because positions are computed for the model's full `history_seq_len`. Shapes are therefore
free to choose for speed: B, S and C each come from a short list of buckets, and a shape is
compiled only if B * C <= `max_batch_candidates` (the batcher never forms larger ones).
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
    def row_tokens(self) -> int:
        """Sequence positions of one row: 1 (user) + S + C."""
        return 1 + self.history + self.candidates


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
    # `server.runner.ModelRunner.warmup`); None: every shape of the plan.
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
        if self.ready is None or shape in self.ready:
            return shape
        holds = [x for x in self.ready if x.rows >= r and x.history >= s and x.candidates >= c]
        return min(holds, key=lambda x: (x.rows * x.row_tokens, x), default=None)

    def window_for(self, num_candidates: int, num_history: int) -> int:
        """The window to split a request into: the candidate bucket that scores it in the
        fewest padded tokens, each row costing its user + history slots plus its window."""
        history = min(num_history, self.history_buckets[-1])

        def tokens(window: int) -> float:
            shape = self.shape_for(1, history, window)
            return math.inf if shape is None else -(-num_candidates // window) * shape.row_tokens

        return min(self.candidate_buckets, key=tokens)

    def essential(self) -> list[BatchShape]:
        """The shapes that hold any request, one window per batch: one row of the full history
        and each candidate bucket. Serving can start once these are compiled."""
        s = self.history_buckets[-1]
        return [BatchShape(1, s, c) for c in self.candidate_buckets]

    def with_ready(self, shapes) -> BucketPlan:
        """This plan restricted to `shapes` (compiled so far); all of them: the full plan."""
        ready = frozenset(shapes)
        return dataclasses.replace(self, ready=None if ready >= set(self.shapes()) else ready)

    def shapes(self) -> list[BatchShape]:
        """Every shape `shape_for` can return: what warm-up compiles."""
        return [
            BatchShape(r, s, c)
            for r, s, c in itertools.product(
                self.row_buckets, self.history_buckets, self.candidate_buckets
            )
            if r * c <= self.max_batch_candidates
        ]


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
        max_batch_candidates=max_batch_candidates or max(candidate_buckets) * 4,
    )
