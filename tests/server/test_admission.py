"""The admission policy alone (server.scheduling.admission): the queue's bound by work and deadline, for
which calls it is full, and the retry hint's floor, on cases small enough to check by hand."""

from __future__ import annotations

import math

import grpc

from server.scheduling.admission import (
    MIN_RETRY_MS,
    decide,
    fullness_s,
    queue_bound_s,
    retry_hint_ms,
)


def _decide(queued_s: float, remaining_s: float | None, share: float = 0.1, own_s: float = 0.01):
    return decide(own_s=own_s, queued_s=queued_s, in_flight_s=0.0, queued_requests=10,
                  remaining_s=remaining_s, max_queue_s=0.25, max_queue=1024,
                  deadline_share=share)  # fmt: skip


def test_a_far_deadline_may_wait_behind_a_share_of_it():
    assert queue_bound_s(0.25, None, 0.1) == 0.25
    assert queue_bound_s(0.25, 2.0, 0.1) == 0.25  # a near deadline: the queue's own bound
    assert queue_bound_s(0.25, 10.0, 0.1) == 1.0
    # 0.5 s queued: refused for a call with 2 s to go, admitted for one with 10 s.
    refused = _decide(0.5, 2.0)
    assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _decide(0.5, 10.0) is None
    assert _decide(0.5, 10.0, share=0.0) is not None  # no share: the fixed bound


def test_the_deadline_still_refuses_what_cannot_finish_in_time():
    refused = _decide(0.5, 0.4)
    assert refused.code == grpc.StatusCode.DEADLINE_EXCEEDED and refused.reason == "deadline"


def test_fullness_says_for_which_deadlines_the_queue_is_full():
    kw = {"max_queue_s": 0.25, "max_queue": 100, "deadline_share": 0.1}
    assert fullness_s(0.01, 0.1, 5, **kw) == 0.0  # room for anyone
    assert fullness_s(0.01, 0.0, 0, **kw) == 0.0  # an empty queue takes any request
    assert math.isclose(fullness_s(0.01, 0.49, 5, **kw), 5.0)  # 0.5 s of work: under 5 s
    assert fullness_s(0.01, 0.1, 100, **kw) == math.inf  # full by count, for everyone
    # Consistent with decide: full for a deadline just under it, not just over.
    assert _decide(0.49, 4.99) is not None and _decide(0.49, 5.01) is None


def test_a_retry_hint_is_never_shorter_than_the_floor():
    assert retry_hint_ms(0.0) == MIN_RETRY_MS
    assert retry_hint_ms(0.0001) == MIN_RETRY_MS
    assert retry_hint_ms(0.1234) == 124
