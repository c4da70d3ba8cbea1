"""The lifecycle state machine alone (server.operations.lifecycle): phases, refusals, parking, settling,
from threads as gRPC's handlers call it."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from server.errors import ShuttingDown
from server.operations.lifecycle import Lifecycle, Phase


def test_phases_only_advance():
    lifecycle = Lifecycle()
    assert lifecycle.phase is Phase.STARTING
    lifecycle.advance(Phase.WARMING)
    lifecycle.advance(Phase.DRAINING)  # stopped while warming up: a phase may be skipped
    with pytest.raises(ValueError, match="cannot go back from DRAINING to SERVING"):
        lifecycle.advance(Phase.SERVING)


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        (Phase.STARTING, "starting"),
        (Phase.WARMING, "warming up"),
        (Phase.DRAINING, "shutting down"),
    ],
)
def test_calls_are_refused_unavailable_unless_serving(phase, message):
    lifecycle = Lifecycle()
    lifecycle.advance(phase)
    with pytest.raises(ShuttingDown, match=message):
        lifecycle.admit()
    if phase < Phase.SERVING:
        lifecycle.advance(Phase.SERVING)
        lifecycle.admit()  # admitted: returns


def test_parking_parks_calls_until_stopped():
    lifecycle = Lifecycle()
    lifecycle.advance(Phase.PARKING)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        parked = pool.submit(lifecycle.admit)
        with pytest.raises(concurrent.futures.TimeoutError):
            parked.result(timeout=0.05)  # held unanswered
        before = lifecycle.last_arrival
        lifecycle.advance(Phase.STOPPED)
        with pytest.raises(ShuttingDown):
            parked.result(timeout=5)
    assert lifecycle.quiet_since(before - 1) == before


def test_settled_waits_for_calls_between_the_door_and_the_queue():
    lifecycle = Lifecycle()
    inside, leave = threading.Event(), threading.Event()

    def call() -> None:
        with lifecycle.entering():
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=call)
    thread.start()
    inside.wait(5)
    assert not lifecycle.wait_settled(0.05)
    leave.set()
    assert lifecycle.wait_settled(5)
    thread.join()


def test_the_lame_duck_still_admits_calls_but_is_not_ready():
    lifecycle = Lifecycle()
    lifecycle.advance(Phase.SERVING)
    assert lifecycle.readiness() == (True, "ready")
    lifecycle.advance(Phase.LAME_DUCK)
    lifecycle.admit()  # admitted: returns
    ready, why = lifecycle.readiness()
    assert not ready and "shutting down" in why


def test_a_held_server_refuses_calls_with_the_reason_until_released():
    from server.errors import Withdrawn

    lifecycle = Lifecycle()
    lifecycle.advance(Phase.SERVING)
    lifecycle.hold("model version 3 withdrawn: its file changed")
    with pytest.raises(Withdrawn, match="its file changed"):
        lifecycle.admit()
    assert lifecycle.readiness() == (False, "no model version may serve: model version 3 "
                                     "withdrawn: its file changed")  # fmt: skip
    lifecycle.hold(None)
    lifecycle.admit()
    assert lifecycle.readiness() == (True, "ready")


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.WARMING, Phase.DRAINING, Phase.PARKING])
def test_readiness_says_why_not(phase):
    lifecycle = Lifecycle()
    lifecycle.advance(phase)
    ready, why = lifecycle.readiness()
    assert not ready and why
