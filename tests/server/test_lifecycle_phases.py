"""The lifecycle state machine alone (server.lifecycle): phases, refusals, parking, settling."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import ShuttingDown
from server.lifecycle import Lifecycle, Phase


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
    async def main():
        lifecycle = Lifecycle()
        lifecycle.advance(phase)
        with pytest.raises(ShuttingDown, match=message):
            await lifecycle.admit()
        lifecycle.advance(max(phase, Phase.SERVING))
        if lifecycle.serving:
            await lifecycle.admit()  # admitted: returns

    asyncio.run(main())


def test_lame_duck_parks_calls_until_stopped():
    async def main():
        lifecycle = Lifecycle()
        lifecycle.advance(Phase.LAME_DUCK)
        parked = asyncio.ensure_future(lifecycle.admit())
        await asyncio.sleep(0.01)
        assert not parked.done()  # held unanswered
        before = lifecycle.last_arrival
        lifecycle.advance(Phase.STOPPED)
        with pytest.raises(ShuttingDown):
            await parked
        assert lifecycle.quiet_since(before - 1) == before

    asyncio.run(main())


def test_settled_waits_for_calls_between_the_door_and_the_queue():
    async def main():
        lifecycle = Lifecycle()
        with lifecycle.entering():
            waiting = asyncio.ensure_future(lifecycle.settled())
            await asyncio.sleep(0.01)
            assert not waiting.done()
        await asyncio.wait_for(waiting, 1)

    asyncio.run(main())
