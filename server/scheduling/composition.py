"""Batch composition: which of the queued pieces form the next batch (a pure policy).

A piece is one row of a batch: a request's user and history plus a window of its candidates,
described here only by its size, `(history events n, candidates m)`. Given the live pieces at
the head of the queue, in FIFO order, `next_batch_size` returns how many of them the next
batch takes. The batcher only waits, pops that many and dispatches.

Rules, in order:
1. Take pieces while the batch still fits a planned shape (rows, history and candidate
   buckets, and the plan's bound on candidate slots per batch).
2. A piece joins only if it costs the batch at most `MAX_JOIN_COST` times what it would cost
   alone (work units of the padded shape): a 32-candidate window does not ride in a row padded to
   1,024 slots; it starts the next batch instead.
3. If more than `MAX_PADDING_ROWS` of the chosen row bucket would be padding rows, cut back to
   the largest row bucket the pieces fill: the rest runs next, which costs a device call
   instead of whole rows of padding (3 pieces run as 2 + 1, not as 4 rows).
4. With `max_units` given, the batch stops before its padded shape would hold more work units
   than that (its first piece always joins): one batch's device time is bounded, so a large
   request runs as several batches, and the batcher can put other requests between them.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.scheduling.buckets import BucketPlan

MAX_JOIN_COST = 2.0
MAX_PADDING_ROWS = 0.2


def next_batch_size(
    pieces: Iterable[tuple[int, int]], plan: BucketPlan, max_units: float | None = None
) -> int:
    """How many of `pieces` ((n, m) each, FIFO order) the next batch takes; 0 if none.

    Consumes `pieces` lazily and stops at the first piece that does not join, so a caller
    may pass a generator over a long queue.
    """
    count = longest_history = longest_window = 0
    for history, window in pieces:
        h, w = max(longest_history, history), max(longest_window, window)
        shape = plan.shape_for(count + 1, h, w)
        if shape is None:
            break
        if count and max_units is not None and shape.rows * shape.row_units > max_units:
            break
        if count:
            before = plan.shape_for(count, longest_history, longest_window)
            added = (count + 1) * shape.row_units - count * before.row_units
            alone = plan.shape_for(1, history, window)
            if added > MAX_JOIN_COST * alone.row_units:
                break
        count, longest_history, longest_window = count + 1, h, w
    if count:
        rows = plan.shape_for(count, longest_history, longest_window).rows
        filled = [r for r in plan.row_buckets if r <= count]
        if rows - count > MAX_PADDING_ROWS * rows and filled:
            count = filled[-1]
    return count
