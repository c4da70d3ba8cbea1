"""Admission: whether a request may join the queue, decided from work, not from counts.

Work is measured in work units (a row costs 1 user + S history + C candidate slots of its
batch shape: `BatchShape.row_units`) and converted to device seconds with `DeviceRate`, an
estimate of seconds per unit kept current from every batch the device runs. The queue is bounded by the estimated
device time of what it holds (`max_queue_ms`), so 256 queued 2,800-candidate requests (seconds
of compute) and 256 queued 16-candidate ones (milliseconds) are not the same queue.

`decide` is the pure policy. In order:
1. A deadline that has already passed: DEADLINE_EXCEEDED.
2. A request that cannot finish before its deadline, given the work ahead of it (queued plus
   in flight) and its own: DEADLINE_EXCEEDED at once, not computed late. With nothing ahead
   of it a request is always tried (its own estimate alone is not trusted to refuse it).
3. A queue that would hold more than `max_queue_s` of work with this request (or, for a
   request with a far deadline, more than a share of the time it has left: `queue_bound_s`),
   or more than `max_queue` requests: RESOURCE_EXHAUSTED, with a retry hint equal to the time
   the device needs to work the queue down to where this request would fit (at least
   `MIN_RETRY_MS`). A request always fits an empty queue, however large it is (the request
   limits bound it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

# Weight of the newest batch in the seconds-per-unit estimate (an exponential moving average
# over roughly the last 1 / EWMA_WEIGHT batches).
EWMA_WEIGHT = 0.1
# A batch counts as at most this many times the current estimate: one batch stalled by
# something else (a compilation in the background, a garbage collection) moves the estimate by
# at most EWMA_WEIGHT x (MAX_SAMPLE_RATIO - 1) = 30%, while a lasting slow-down is still
# followed within a few batches. Small batches (one chunk of 16-32 candidates) make single
# stalls weigh heavily per unit, which is why this matters.
MAX_SAMPLE_RATIO = 4.0
# The shortest retry hint, in ms: a client told to retry in less (a queue that is full of
# nothing but the batch on the device) would only come back to the same refusal, and a
# refusal repeated at that pace is a retry storm.
MIN_RETRY_MS = 10


class DeviceRate:
    """Device seconds per work unit, learned from the batches the device runs."""

    def __init__(self, seconds_per_unit: float):
        if not seconds_per_unit > 0:
            raise ValueError(f"seconds_per_unit must be positive, got {seconds_per_unit}")
        self.seconds_per_unit = seconds_per_unit

    def observe(self, units: int, seconds: float) -> None:
        """One batch of `units` work units took `seconds` on the device."""
        if units > 0 and seconds > 0:
            sample = min(seconds / units, MAX_SAMPLE_RATIO * self.seconds_per_unit)
            self.seconds_per_unit += EWMA_WEIGHT * (sample - self.seconds_per_unit)

    def seconds(self, units: int) -> float:
        return units * self.seconds_per_unit


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode  # RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED
    reason: str  # a metric label: "deadline", "queue_full"
    message: str
    retry_after_ms: int | None = None  # grpc-retry-pushback-ms, for RESOURCE_EXHAUSTED


def decide(
    *,
    own_s: float,
    queued_s: float,
    in_flight_s: float,
    queued_requests: int,
    remaining_s: float | None,
    max_queue_s: float,
    max_queue: int,
    deadline_share: float = 0.0,
) -> Refusal | None:
    """None to admit, else the refusal. Times in seconds; `remaining_s` None = no deadline.

    own_s           estimated device time of this request
    queued_s        estimated device time of the requests already queued
    in_flight_s     estimated device time of the batches on the device now
    deadline_share  the queue may also hold up to this share of the request's remaining
                    deadline (`queue_bound_s`)
    """
    if remaining_s is not None and remaining_s <= 0:
        return Refusal(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "deadline",
            "deadline had already passed when the request arrived; not computed",
        )
    wait_s = queued_s + in_flight_s
    if remaining_s is not None and wait_s > 0 and wait_s + own_s > remaining_s:
        return Refusal(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "deadline",
            f"cannot finish before the deadline: ~{_ms(wait_s)} ms of work is ahead of it and it "
            f"needs ~{_ms(own_s)} ms, the deadline is in {_ms(remaining_s)} ms; not computed",
        )
    bound_s = queue_bound_s(max_queue_s, remaining_s, deadline_share)
    too_much_work = queued_s + own_s > bound_s
    if queued_requests and (too_much_work or queued_requests >= max_queue):
        excess_s = queued_s + own_s - bound_s if too_much_work else queued_s / queued_requests
        retry_ms = retry_hint_ms(in_flight_s + excess_s)
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "queue_full",
            f"server overloaded: {queued_requests} requests (~{_ms(queued_s)} ms of work) "
            f"queued; you may retry after ~{retry_ms} ms",
            retry_ms,
        )
    return None


def queue_bound_s(max_queue_s: float, remaining_s: float | None, deadline_share: float
                  ) -> float:  # fmt: skip
    """The most queued work (seconds) a request is admitted behind: `max_queue_s`, or, for a
    request whose deadline is far, `deadline_share` of the time it has left. The estimate is
    device time, which misses the host's own time under load by several times: a bound of a
    small share of the deadline keeps what is admitted well within it."""
    if remaining_s is None:
        return max_queue_s
    return max(max_queue_s, deadline_share * remaining_s)


def fullness_s(own_s: float, queued_s: float, queued_requests: int, max_queue_s: float,
               max_queue: int, deadline_share: float) -> float:  # fmt: skip
    """For which requests the queue is full now: those with less than this many seconds to
    their deadline (0: none, inf: all) would be refused for want of room (`decide`'s third
    rule, for a request of `own_s`). What a door needs to refuse by deadline without asking
    the queue (`server.door.call_limits.Door`, a frontend worker's)."""
    if not queued_requests:
        return 0.0
    if queued_requests >= max_queue:
        return math.inf
    work = queued_s + own_s
    if work <= max_queue_s:
        return 0.0
    return work / deadline_share if deadline_share > 0 else math.inf


def retry_hint_ms(wait_s: float) -> int:
    """A retry hint (grpc-retry-pushback-ms) for an expected wait of `wait_s` seconds."""
    return max(MIN_RETRY_MS, math.ceil(round(1000 * wait_s, 6)))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
