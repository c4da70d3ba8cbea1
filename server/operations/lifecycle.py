"""The serving lifecycle of one process: a small state machine the handlers and the transport
read.

    STARTING -> WARMING -> SERVING -> LAME_DUCK -> DRAINING -> PARKING -> STOPPED

STARTING   ports are being bound; calls are refused UNAVAILABLE
WARMING    the shapes that hold any request are compiling; calls are refused UNAVAILABLE
SERVING    calls are admitted; ready (readiness 200, gRPC health SERVING)
LAME_DUCK  (SIGTERM) not ready (readiness 503, health NOT_SERVING) so that balancers stop
           sending, but calls are still admitted and answered, for `--drain-delay-seconds`:
           a balancer that polls readiness every few seconds sends calls until it has seen it
DRAINING   new calls are refused UNAVAILABLE at once; calls already past the door finish
           decoding and join the queue, and queued work is answered
PARKING    new calls are parked (held unanswered) until the transport stops, then refused
           UNAVAILABLE: see `server.door.transport` for why
STOPPED    the transport has stopped; parked calls are released

While SERVING, the server may be *held*: no model version may serve (the serving one was
withdrawn: its file changed or failed its checksums, or it scored non-finite values; see
`server.publication`), so calls are refused UNAVAILABLE with the reason, until another
version serves. Being held is not a phase: it comes and goes, phases only advance (a skipped
phase is allowed: a server stopped while warming goes to DRAINING). Thread-safe: handlers run
on gRPC's threads, the transport advances the phases from the event loop.

With frontend worker processes the device process's `FrontendHub` holds the lifecycle and
each frontend's follows it (`server.door.ipc` STATE frames carry the phase and the hold).
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Iterator

from server.errors import ShuttingDown, Withdrawn


class Phase(enum.IntEnum):
    STARTING = 0
    WARMING = 1
    SERVING = 2
    LAME_DUCK = 3
    DRAINING = 4
    PARKING = 5
    STOPPED = 6


_REFUSALS = {
    Phase.STARTING: "server is starting; retry shortly",
    Phase.WARMING: "server is warming up; retry shortly",
}
_SHUTTING_DOWN = "server is shutting down; retry on another replica"
_NOT_READY = {**_REFUSALS, Phase.LAME_DUCK: "shutting down: still answering calls for a while"}


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.last_arrival = time.monotonic()  # when the latest call arrived (lame duck)
        self._lock = threading.Lock()
        self._entering = 0  # calls past the door and not yet handed to the queue
        self._settled = threading.Condition(self._lock)  # notified when _entering drops to 0
        self._stopped = threading.Event()
        self._held: str | None = None  # why no version may serve, while SERVING

    def hold(self, reason: str | None) -> None:
        """Refuse calls UNAVAILABLE with `reason` (no version may serve); None: admit again."""
        self._held = reason

    @property
    def held(self) -> str | None:
        return self._held

    @property
    def ready(self) -> bool:
        """Takes traffic: serving, and a version may serve."""
        return self.phase is Phase.SERVING and self._held is None

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not or "ready"): what /readyz answers."""
        phase, held = self.phase, self._held
        if phase is Phase.SERVING and held is None:
            return True, "ready"
        if phase is Phase.SERVING:
            return False, f"no model version may serve: {held}"
        return False, _NOT_READY.get(phase, _SHUTTING_DOWN)

    def advance(self, phase: Phase) -> None:
        """Move forward to `phase` (ValueError for a step back)."""
        with self._lock:
            if phase < self.phase:
                raise ValueError(f"lifecycle cannot go back from {self.phase.name} to {phase.name}")
            self.phase = phase
        if phase is Phase.STOPPED:
            self._stopped.set()

    @property
    def serving(self) -> bool:
        return self.phase is Phase.SERVING

    def admit(self) -> None:
        """At a call's door (its thread): return if the call may go on, else raise
        ShuttingDown (after parking the call until the transport stops, when lame duck)."""
        self.last_arrival = time.monotonic()
        phase = self.phase
        if phase is Phase.SERVING or phase is Phase.LAME_DUCK:
            held = self._held
            if held is not None:
                raise Withdrawn(held)
            return
        if phase is Phase.PARKING:
            self._stopped.wait()
        raise ShuttingDown(_REFUSALS.get(phase, _SHUTTING_DOWN))

    @contextlib.contextmanager
    def entering(self) -> Iterator[None]:
        """Around a call's host work between the door and the queue: a drain waits for these
        (`wait_settled`), so a call admitted before the drain began is queued, not refused."""
        with self._lock:
            self._entering += 1
        try:
            yield
        finally:
            with self._lock:
                self._entering -= 1
                if not self._entering:
                    self._settled.notify_all()

    def wait_settled(self, timeout: float) -> bool:
        """Wait (a thread) until no call is between the door and the queue; False on timeout."""
        with self._lock:
            return self._settled.wait_for(lambda: self._entering == 0, timeout)

    def quiet_since(self, since: float) -> float:
        """When the latest call arrived, or `since` if none arrived after it."""
        return max(self.last_arrival, since)
