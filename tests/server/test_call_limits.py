"""What bounds a call at the transport, alone: the door's decision, the capacity's sizing, and
the receive watchdog's slow-body budget (real threads, fake calls)."""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest

from server.door import call_limits
from server.door.call_limits import CONTROL_RESERVE, Door, ReceiveWatchdog, call_capacity
from server.errors import InvalidArgument

RANK = "/phoenix.ranking.v1.RankingService/Rank"
HEALTH = "/grpc.health.v1.Health/Check"


def test_the_door_refuses_scoring_calls_while_the_queue_is_full_for_them_and_past_capacity():
    fullness = [0.0]  # the queue is full for calls with fewer seconds than this to go
    door = Door(10, frozenset({RANK}), lambda: fullness[0], default_s=10.0)
    assert door.refusal(RANK, 9, 1.0) is None
    assert door.refusal(RANK, 10, 1.0) == "capacity"
    fullness[0] = 2.0
    assert door.refusal(RANK, 0, 1.0) == "queue_full"
    assert door.refusal(RANK, 0, 3.0) is None  # a farther deadline may wait longer
    assert door.refusal(RANK, 0, None) is None  # no deadline: the default, 10 s
    fullness[0] = math.inf
    assert door.refusal(RANK, 0, None) == "queue_full"


def test_the_door_keeps_places_for_health_checks_whatever_the_queue():
    door = Door(10, frozenset({RANK}), lambda: math.inf, default_s=10.0)
    assert door.refusal(HEALTH, 10, None) is None  # scoring calls fill it: probes go on
    assert door.refusal(HEALTH, 10 + CONTROL_RESERVE - 1, None) is None
    assert door.refusal(HEALTH, 10 + CONTROL_RESERVE, None) == "capacity"


def test_capacity_is_the_configured_count_or_what_the_process_can_hold(monkeypatch):
    assert call_capacity(7, 2**20) == 7
    monkeypatch.setattr(call_limits, "_thread_limit", lambda: None)
    monkeypatch.setattr(call_limits, "_memory_limit", lambda: None)
    assert call_capacity(0, 2**20) == call_limits.MAX_AUTO_CAPACITY  # what the transport holds
    monkeypatch.setattr(call_limits, "_thread_limit", lambda: 100)
    assert call_capacity(0, 2**20) == 50  # half the threads the process may start
    monkeypatch.setattr(call_limits, "_thread_limit", lambda: 100_000)
    monkeypatch.setattr(call_limits, "_memory_limit", lambda: 2**27)
    assert call_capacity(0, 2**20) == 32  # a quarter of 128 MiB at 1 MiB a call
    monkeypatch.setattr(call_limits, "_memory_limit", lambda: 2**20)
    assert call_capacity(0, 2**20) == call_limits.MIN_AUTO_CAPACITY


def test_calls_awaiting_their_bodies_have_places_of_their_own():
    waiting = [0]
    door = Door(10, frozenset({RANK}), lambda: 0.0, 10.0, waiting=lambda: waiting[0])
    assert door.places == 10 + call_limits.RECEIVE_PLACES + CONTROL_RESERVE
    assert door.refusal(RANK, 10, 1.0) == "capacity"
    waiting[0] = 40  # 50 held, 40 of them trickling their bodies: 10 with bodies, room left
    assert door.refusal(RANK, 49, 1.0) is None
    assert door.refusal(RANK, 50, 1.0) == "capacity"
    waiting[0] = call_limits.RECEIVE_PLACES  # every place for bodies awaited is taken
    held = 9 + call_limits.RECEIVE_PLACES
    assert door.refusal(RANK, held, 1.0) is None  # one place with a body left
    assert door.refusal(RANK, held + 1, 1.0) == "capacity"
    assert door.refusal(HEALTH, door.places - 1, None) is None  # probes keep their reserve
    assert door.refusal(HEALTH, door.places, None) == "capacity"


def test_a_connection_ended_for_a_slow_body_is_refused_at_the_door_for_a_while():
    peers = []

    def peer():
        peers.append(1)
        return b"ipv4:10.0.0.1:5000"

    penalties: dict = {}
    door = Door(10, frozenset({RANK}), lambda: 0.0, 10.0, penalties=penalties)
    assert door.penalty_s(peer) == 0 and not peers  # no penalties: the peer is not asked for
    penalties["ipv4:10.0.0.1:5000"] = (time.monotonic() + 5.0, 1)
    penalties["ipv4:10.0.0.1:5001"] = (time.monotonic() - 1.0, 1)  # served its time
    assert 4.0 < door.penalty_s(peer) <= 5.0
    assert door.penalty_s(lambda: "ipv4:10.0.0.1:5001") == 0
    assert door.penalty_s(lambda: "ipv4:10.0.0.2:5000") == 0
    assert door.refusal(RANK, 0, 1.0, penalty_s=4.0) == "slow_body"
    assert door.refusal(HEALTH, 0, None, penalty_s=4.0) is None  # probes are never slow bodies
    assert [call_limits.penalty_seconds(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert call_limits.penalty_seconds(10) == call_limits.SLOW_PENALTY_MAX_SECONDS


class FakeCall:
    """What the watchdog sees of a call: a body that arrives when `send` is called, or never;
    ending the call (the watchdog's `cancel`) ends its stream."""

    _ports = iter(range(40000, 60000))

    def __init__(self):
        self.peer_name = f"ipv4:127.0.0.1:{next(self._ports)}"  # a connection of its own
        self.body = threading.Event()
        self.ended = threading.Event()
        self.code = None
        self.remaining = 100.0
        self._rpc_event = self  # the watchdog ends a call through context._rpc_event.call
        self.call = self

    def cancel(self, code=None, details=None):
        self.code = code
        self.ended.set()

    def time_remaining(self):
        return self.remaining

    def is_active(self):
        return not self.ended.is_set()

    def peer(self):
        return self.peer_name

    def requests(self):
        while not (self.body.is_set() or self.ended.is_set()):
            self.body.wait(0.01)
        if self.ended.is_set():
            raise grpc.RpcError()
        yield b"body"


def _receive(watchdog, call, results):
    try:
        results.append(watchdog.receive(call.requests(), call))
    except Exception as e:  # noqa: BLE001 - what the handler would see
        results.append(e)


def test_a_body_that_never_arrives_ends_its_call_deadline_exceeded():
    watchdog = ReceiveWatchdog(0.2)
    call, results = FakeCall(), []
    started = time.monotonic()
    _receive(watchdog, call, results)
    assert isinstance(results[0], call_limits.CallEnded)
    assert results[0].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.15 < time.monotonic() - started < 2
    watchdog.stop()


def test_past_their_budget_the_oldest_slow_bodies_are_ended_early():
    watchdog = ReceiveWatchdog(30.0, slow_budget=4)
    slow = []
    threads = []
    results: list = []
    for _ in range(8):  # twice the budget, never sending, each a little younger
        slow.append(FakeCall())
        threads.append(threading.Thread(target=_receive, args=(watchdog, slow[-1], results)))
        threads[-1].start()
        time.sleep(0.01)
    # Over budget: the oldest go once SLOW_BODY_SECONDS old, long before the 30 s timeout,
    # until the budget holds the rest.
    for c in slow[:4]:
        assert c.ended.wait(5), "a slow body past the budget was not ended"
    deadline = time.monotonic() + 5
    while watchdog.waiting > 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdog.waiting == 4 and watchdog.ended_slow == 4
    assert not any(c.ended.is_set() for c in slow[4:])
    # Their connections are refused at the door for a while; the others are not.
    assert set(watchdog.penalties) == {c.peer_name for c in slow[:4]}
    for until, endings in watchdog.penalties.values():
        assert endings == 1
        assert 0 < until - time.monotonic() <= call_limits.SLOW_PENALTY_SECONDS
    # A prompt body still gets through beside them; the slow ones within the budget too.
    prompt, got = FakeCall(), []
    prompt.body.set()
    _receive(watchdog, prompt, got)
    assert got == [b"body"]
    for c in slow[4:]:
        c.body.set()
    for t in threads:
        t.join(5)
    assert results.count(b"body") == 4
    assert sum(isinstance(r, call_limits.CallEnded) for r in results) == 4
    watchdog.stop()


def test_within_the_budget_a_slow_body_keeps_its_full_timeout():
    watchdog = ReceiveWatchdog(30.0, slow_budget=4)
    calls = [FakeCall() for _ in range(3)]
    results: list = []
    threads = [threading.Thread(target=_receive, args=(watchdog, c, results)) for c in calls]
    for t in threads:
        t.start()
    time.sleep(3 * call_limits.SLOW_BODY_SECONDS)  # what the test asserts: nothing happens
    assert not any(c.ended.is_set() for c in calls)
    for c in calls:
        c.body.set()
    for t in threads:
        t.join(5)
    assert results == [b"body"] * 3
    watchdog.stop()


def test_a_call_with_no_message_is_invalid():
    watchdog = ReceiveWatchdog(5.0)
    with pytest.raises(InvalidArgument, match="no request message"):
        watchdog.receive(iter(()), FakeCall())


def test_a_stream_that_ends_with_its_call_is_counted_as_its_client_saw_it():
    # grpcio may end the request stream of a call whose deadline passed (or whose client went
    # away) as if the client had sent no message: the call, not the request, ended.
    watchdog = ReceiveWatchdog(5.0)
    late, gone = FakeCall(), FakeCall()
    late.remaining = 0.0
    for call in (late, gone):
        call.ended.set()
    with pytest.raises(call_limits.CallEnded) as ended:
        watchdog.receive(iter(()), late)
    assert ended.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(call_limits.CallEnded) as ended:
        watchdog.receive(iter(()), gone)
    assert ended.value.code == grpc.StatusCode.CANCELLED
    watchdog.stop()
    watchdog.stop()


def test_the_door_refuses_while_the_host_is_behind():
    queued = [500]  # of the calls held, those queued for the device
    door = Door(1000, frozenset({RANK}), lambda: 0.0, 10.0, lambda: queued[0])
    assert door.refusal(RANK, 500 + call_limits.HOST_SLOTS - 1, 2.0) is None
    assert door.refusal(RANK, 500 + call_limits.HOST_SLOTS, 2.0) == "host_busy"
    assert door.refusal(HEALTH, 500 + call_limits.HOST_SLOTS, 2.0) is None
    queued[0] = 600  # the same calls, more of them queued: room for host work again
    assert door.refusal(RANK, 500 + call_limits.HOST_SLOTS, 2.0) is None
    queued[0] = 500
    door.waiting = lambda: 100  # or awaiting their bodies: no host work either
    assert door.refusal(RANK, 500 + call_limits.HOST_SLOTS, 2.0) is None
