"""What bounds a call at the transport, before the service decodes a byte of it.

How many at once (`call_capacity`). gRPC's synchronous server runs each call on a thread of
its own, from its headers to its answer, and every thread shares the interpreter with the one
polling thread that takes and refuses calls: by default it holds what that thread keeps up
with under a flood (MAX_AUTO_CAPACITY, measured), within the threads and memory the process
may use. What bounds the *work* admitted is the queue (`server.scheduling.admission`: work and
deadlines).

Who is refused at the door (`Door`, installed with `install_door`). gRPC's server decides on
its polling thread, before a handler thread or the request body is touched, whether to take a
call (about 50 us of CPU to refuse one, where a refusal by a handler costs about three times
that and one by the asyncio server four: bench/host_path.py's door section). `Door.refuses`
makes that decision by the queue's state, not by a count: a scoring call is refused while the
queue would refuse a typical request with its deadline for want of room (`queue_full`), while
`HOST_SLOTS` calls are doing host work (`host_busy`: the host, not the device, is behind), or
past the capacity. Calls still awaiting their request body do not count against the capacity:
they have `RECEIVE_PLACES` of their own (a thread each, asleep), so clients that trickle bodies
cannot take the places of calls that have theirs;
the other calls (health checks, GetModelInfo, reflection, admin) keep `CONTROL_RESERVE` more
places, so a probe is answered when the scoring calls fill the server. It replaces grpcio's
private `grpc._server._handle_call` decision (the flag it is called with), checked against
the installed version at start: a grpcio whose internals changed keeps its own count limit
(the capacity) and the service's own refusals in the handler, and says so in the log.

The refusal's retry hint. grpcio sends its refusals as RESOURCE_EXHAUSTED without a retry
hint; `install_retry_hint` makes them carry `grpc-retry-pushback-ms`, from a function of the
serving process (how long its queue takes to drain), like the service's own refusals. It
replaces grpcio's private `grpc._server._reject_rpc` (the only place the refusal is sent),
checked the same way; `tests/server/test_overload.py` holds the hint to being there.

How long a body may take. A call whose request body never arrives would hold a handler
thread (and a place among the calls at once) until its connection ends. Handlers take their
request as a stream (`ReceiveWatchdog.receive`), so they start on the call's headers; one
watchdog thread ends every call whose body has not arrived within `receive_timeout_s` with
DEADLINE_EXCEEDED (through the call object grpcio keeps on the handler's context: grpcio's
public `cancel()` could only answer CANCELLED). Slow bodies have a budget of their own: while
more than `slow_budget` calls wait for their bodies at once (a slowloris: clients trickling
bodies a byte at a time, reconnecting as they are ended), those waiting longer than
`SLOW_BODY_SECONDS` are ended too, oldest first. A connection whose call was ended so is
refused at the door for a while (`slow_body`, RESOURCE_EXHAUSTED, its retry hint the time left:
`penalty_seconds`, doubling with each further ending), so clients that re-send the instant
they are ended cannot take the places back from ordinary calls. A client that opens a new
connection for every call evades that: it holds a place for SLOW_BODY_SECONDS at a time, and
limits per address belong in front of the server (docs/deployment.md).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc

from server.errors import InvalidArgument

log = logging.getLogger("phoenix.server")

# The hint of a transport refusal, in milliseconds: a function of the serving process.
_retry_hint: Callable[[], int] = lambda: 100  # noqa: E731
_installed = False

# Automatic capacity: at most this many calls at once, and at least this many. Each call held
# is a thread of gRPC's synchronous server, and all of them share the interpreter with the one
# polling thread that takes and refuses calls and drives gRPC's own I/O. Measured at 4x
# open-loop overload on 2 cores (bench/host_path.py overload): with 80 places goodput 0.96x,
# nothing shed; with 128, 256 or 1,024 places the polling thread fell seconds behind and
# goodput collapsed to 0.29-0.47x, with the door refusing by queue and deadline, threads
# started in advance, and the calls doing host work bounded (HOST_SLOTS) alike. So 80, where
# threads or memory allow; closed loops of more callers than that get RESOURCE_EXHAUSTED with
# a retry hint, and those honouring it all get through.
MAX_AUTO_CAPACITY = 80
MIN_AUTO_CAPACITY = 16
# Of the threads the process may start, and of its memory, the share calls at once may take.
THREAD_SHARE = 0.5
MEMORY_SHARE = 0.25
# Places beyond the capacity that only calls other than scoring ones may take (health checks,
# GetModelInfo, reflection, admin calls): a probe is answered when scoring calls fill it.
CONTROL_RESERVE = 16
# While more calls than their budget wait for their bodies, those waiting longer than this
# are ended (a body that is not trickling arrives within milliseconds of its headers).
SLOW_BODY_SECONDS = 0.5
# Calls that may wait for their bodies at once before those waiting longer than
# SLOW_BODY_SECONDS are ended (slowloris: `ReceiveWatchdog`).
SLOW_BODIES = 32
# Calls awaiting their request body that the door holds beside the capacity (each a thread,
# asleep until its body arrives): a slowloris fills these, not the places of calls with bodies.
RECEIVE_PLACES = 4 * SLOW_BODIES
# A connection whose call was ended for the slow-body budget is refused at the door for this
# long, doubled for each further ending while it is remembered, up to SLOW_PENALTY_MAX_SECONDS;
# it is forgotten SLOW_PENALTY_MAX_SECONDS after its refusals end. At most PENALIZED_PEERS
# connections are remembered (the oldest forgotten first).
SLOW_PENALTY_SECONDS = 5.0
SLOW_PENALTY_MAX_SECONDS = 60.0
PENALIZED_PEERS = 4096
# Calls held at once that are not queued for the device (receiving their body, decoding,
# waiting for the event loop, answering), at most: every such call costs gRPC's one polling
# thread several events, and past this many the host, not the device, is behind. A call let in
# then would wait for the interpreter beside them (and its body, which that thread delivers,
# would seem slow): refused `host_busy` (RESOURCE_EXHAUSTED, retry hint). 80 is what the
# transport held in all at 4x overload while still refusing within ~0.1 s (p99; with 256 the
# process collapsed: bench/host_path.py overload, earlier designs). Calls queued for the
# device and calls awaiting their body do not count: they wait asleep, bounded by the queue's
# work and by RECEIVE_PLACES.
HOST_SLOTS = 80


def call_capacity(configured: int, per_call_bytes: int) -> int:
    """Scoring calls a gRPC server takes at once, each holding a thread and up to
    `per_call_bytes` of request: `configured` when it is positive, else what this process
    can hold: `THREAD_SHARE` of the threads it may start and `MEMORY_SHARE` of its memory
    (cgroup limits counted), between MIN_AUTO_CAPACITY and MAX_AUTO_CAPACITY."""
    if configured > 0:
        return configured
    threads = _thread_limit()
    by_threads = int(THREAD_SHARE * threads) if threads else MAX_AUTO_CAPACITY
    memory = _memory_limit()
    by_memory = int(MEMORY_SHARE * memory / per_call_bytes) if memory else MAX_AUTO_CAPACITY
    return max(MIN_AUTO_CAPACITY, min(MAX_AUTO_CAPACITY, by_threads, by_memory))


def door_places(capacity: int) -> int:
    """Calls a server with `capacity` holds at once: those with their bodies, RECEIVE_PLACES
    awaiting them and CONTROL_RESERVE others (a handler thread each)."""
    return capacity + RECEIVE_PLACES + CONTROL_RESERVE


def penalty_seconds(endings: int) -> float:
    """How long a connection is refused after its `endings`-th call ended for the slow-body
    budget (1: the first)."""
    return min(SLOW_PENALTY_MAX_SECONDS, SLOW_PENALTY_SECONDS * 2 ** (endings - 1))


def _thread_limit() -> int | None:
    """Threads this process may start: the smallest of RLIMIT_NPROC, the cgroup's pids.max
    and the kernel's threads-max (None if none is known)."""
    found = []
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        found.append(soft)
    for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max",
                 "/proc/sys/kernel/threads-max"):  # fmt: skip
        value = _read_int(path)
        if value:
            found.append(value)
    return min(found) if found else None


def _memory_limit() -> int | None:
    """Bytes of memory this process may use: the cgroup's limit, else the machine's RAM."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read_int(path)
        if value and value < 2**60:
            return value
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):  # absent, or "max"
        return None


@dataclass
class Door:
    """The transport's decision to take a call (see the module docstring): pure, apart
    from the two functions of the serving process it reads.

    capacity     scoring calls at once (`call_capacity`)
    scoring      the full names of the scoring methods ("/package.Service/Method")
    fullness     for which calls the queue is full now: those with fewer seconds than this to
                 their deadline (`server.scheduling.admission.fullness_s`)
    default_s    the deadline of a call that carries none (`Limits.default_deadline_ms`)
    queued       calls held whose requests are queued for the device (no host work)
    waiting      calls held that await their request body (`ReceiveWatchdog.waiting`): no
                 host work, and not counted against `capacity` (RECEIVE_PLACES of their own)
    penalties    peer (gRPC's "ipv4:host:port": a connection) -> (monotonic time until which
                 its scoring calls are refused, endings): `ReceiveWatchdog.penalties`, read
                 without a lock (a dict lookup)
    refusals     (full method name, reason) -> calls refused so far: a plain count on gRPC's
                 polling thread, nothing more (read where the metrics are, at scrape)
    """

    capacity: int
    scoring: frozenset[str]
    fullness: Callable[[], float]
    default_s: float
    queued: Callable[[], int] = lambda: 0
    waiting: Callable[[], int] = lambda: 0
    penalties: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    refusals: collections.Counter = field(default_factory=collections.Counter)

    @property
    def places(self) -> int:
        """Calls held at once, at most: the handler threads a server needs."""
        return door_places(self.capacity)

    def refused(self) -> dict[tuple[str, str], int]:
        """The refusals so far, by (full method name, reason): a copy (any thread)."""
        return dict(self.refusals)

    def penalty_s(self, peer: Callable[[], bytes | str]) -> float:
        """Seconds the connection `peer()` names is still refused for slow bodies (0: none);
        `peer` is called only while some connection is."""
        if not self.penalties:
            return 0.0
        name = peer()
        entry = self.penalties.get(name.decode("latin-1") if isinstance(name, bytes) else name)
        return 0.0 if entry is None else max(0.0, entry[0] - time.monotonic())

    def refusal(self, method: str, active: int, remaining_s: float | None,
                penalty_s: float = 0.0) -> str | None:  # fmt: skip
        """Why a call of `method` arriving with `active` calls held, `remaining_s` seconds
        to its deadline (None: none) and its connection refused for `penalty_s` more seconds
        is refused, or None."""
        with_bodies = active - self.waiting()
        if method not in self.scoring:
            full = with_bodies >= self.capacity + CONTROL_RESERVE or active >= self.places
            return "capacity" if full else None
        if penalty_s > 0:
            return "slow_body"
        if with_bodies >= self.capacity or active >= self.places - CONTROL_RESERVE:
            return "capacity"
        remaining = self.default_s if remaining_s is None else remaining_s
        if remaining < self.fullness():
            return "queue_full"
        return "host_busy" if with_bodies - self.queued() >= HOST_SLOTS else None


_doors: dict[int, tuple[Door, object]] = {}  # id(thread pool) -> (door, gRPC's server state)
_details = threading.local()  # the refusal being sent, for `reject_rpc`
_DETAILS = {
    "queue_full": b"server overloaded: the queue is full; you may retry after the "
    b"grpc-retry-pushback-ms trailer",
    "host_busy": b"server overloaded: too many calls are being decoded; you may retry after "
    b"the grpc-retry-pushback-ms trailer",
    "capacity": b"server busy: every call place is taken; you may retry after the "
    b"grpc-retry-pushback-ms trailer",
    "slow_body": b"refused: a request body on this connection arrived too slowly while the "
    b"server was short of places; you may retry after the grpc-retry-pushback-ms trailer",
}
# Why the door refuses a call (a metric label, and the frontends' report: `server.door.ipc`).
DOOR_REASONS = tuple(_DETAILS)


def install_door(server: grpc.Server, thread_pool, door: Door) -> bool:
    """Let `door` decide which calls `server` (built on `thread_pool`) takes; True if
    grpcio's internals allowed it (else gRPC's own count limit stays the only one)."""
    try:
        from grpc import _server

        state = server._state
        state.active_rpc_count  # noqa: B018 - what the door reads
        original = _server._handle_call
        names = original.__code__.co_varnames[:5]
        if names != ("rpc_event", "method_with_handler", "interceptor_pipeline", "thread_pool",
                     "concurrency_exceeded"):  # fmt: skip
            raise AttributeError("grpc._server._handle_call has another signature")
    except (ImportError, AttributeError) as e:
        log.warning("the transport refuses by count only on this grpcio (%s)", e)
        return False
    if not getattr(original, "_phoenix_door", False):

        def handle_call(rpc_event, method_with_handler, interceptor_pipeline, thread_pool,
                        concurrency_exceeded):  # fmt: skip
            found = _doors.get(id(thread_pool))
            if found is not None and rpc_event.success:
                door, state = found
                method = method_with_handler.name() or rpc_event.call_details.method
                if isinstance(method, bytes):
                    method = method.decode("latin-1")
                penalty = door.penalty_s(rpc_event.call.peer)
                reason = door.refusal(method, state.active_rpc_count,
                                      _remaining_s(rpc_event.call_details.deadline),
                                      penalty)  # fmt: skip
                concurrency_exceeded = reason is not None
                if reason is not None:
                    door.refusals[(method, reason)] += 1
                _details.reason = reason
                _details.hint_ms = 1000 * penalty if reason == "slow_body" else None
            return original(rpc_event, method_with_handler, interceptor_pipeline, thread_pool,
                            concurrency_exceeded)  # fmt: skip

        handle_call._phoenix_door = True
        _server._handle_call = handle_call
    _doors[id(thread_pool)] = (door, state)
    return True


def _remaining_s(deadline: float) -> float | None:
    """Seconds to a call's deadline (grpcio's wall-clock seconds), None for none."""
    return deadline_remaining_s(deadline - time.time())


def deadline_remaining_s(remaining: float | None) -> float | None:
    """Seconds to a call's deadline as grpcio reports them (`time_remaining()`), None for a
    call without one (grpcio gives it one NO_DEADLINE_S away at least)."""
    return None if remaining is None or remaining > NO_DEADLINE_S else remaining


# grpcio gives a call without a deadline one this far away at least (~9.2e18 s).
NO_DEADLINE_S = 1e12


def remove_door(thread_pool) -> None:
    _doors.pop(id(thread_pool), None)


def install_retry_hint(hint_ms: Callable[[], int]) -> bool:
    """Make gRPC's refusals past `maximum_concurrent_rpcs` carry `grpc-retry-pushback-ms:
    hint_ms()` (any thread may call `hint_ms`); True if grpcio's internals allowed it."""
    global _retry_hint, _installed
    _retry_hint = hint_ms
    if _installed:
        return True
    try:
        from grpc import _server
        from grpc._cython import cygrpc

        _server._get_initial_metadata_operation  # noqa: B018 - what the replacement uses
        original = _server._reject_rpc
        if original.__code__.co_varnames[:4] != ("rpc_event", "rpc_state", "status", "details"):
            raise AttributeError("grpc._server._reject_rpc has another signature")
    except (ImportError, AttributeError) as e:
        log.warning("transport refusals carry no retry hint on this grpcio (%s)", e)
        return False

    def reject_rpc(rpc_event, rpc_state, status, details):
        metadata = None
        if status == cygrpc.StatusCode.resource_exhausted:
            hint = getattr(_details, "hint_ms", None) or _retry_hint()
            metadata = (("grpc-retry-pushback-ms", str(max(1, int(hint)))),)
            details = _DETAILS.get(getattr(_details, "reason", None), details)
        operations = (
            _server._get_initial_metadata_operation(rpc_state, None),
            cygrpc.ReceiveCloseOnServerOperation(_server._EMPTY_FLAGS),
            cygrpc.SendStatusFromServerOperation(metadata, status, details, _server._EMPTY_FLAGS),
        )
        rpc_event.call.start_server_batch(operations, lambda _event: (rpc_state, ()))

    _server._reject_rpc = reject_rpc
    _installed = True
    return True


class ReceiveWatchdog:
    """Ends calls whose request body is late (see the module docstring). One thread; each
    watched call costs two dictionary operations under a lock.

    timeout_s    a body this late after its headers ends its call
    slow_budget  calls that may wait for their bodies at once before those waiting longer
                 than SLOW_BODY_SECONDS are ended too (None: no budget)
    """

    def __init__(self, timeout_s: float, slow_budget: int | None = None):
        self.timeout_s = timeout_s
        self.slow_budget = slow_budget
        # Calls whose body is awaited, oldest first: call -> (arrival, its context).
        self._waiting: collections.OrderedDict[int, tuple[float, grpc.ServicerContext]] = (
            collections.OrderedDict()
        )
        self._late: set[int] = set()  # calls this watchdog ended, until their handler sees it
        self.ended_slow = 0  # calls ended for the slow-body budget (not their timeout)
        # Connections refused for slow bodies (`Door.penalties`), least recently penalized first.
        self.penalties: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="receive-watchdog", daemon=True)
        self._thread.start()

    def receive(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """A call's one request message, or a ServiceError: InvalidArgument if the client
        sent none, `CallEnded` if the call ended first (its body late, or the client gone)."""
        call = next(self._ids)
        with self._cond:
            self._waiting[call] = (time.monotonic(), context)
            if len(self._waiting) == 1 or self._over_budget():
                self._cond.notify()
        try:
            return next(requests)
        except (StopIteration, grpc.RpcError) as e:
            # A call this watchdog ended can end the stream either way (grpcio reports the
            # cancelled receive as the end of the stream when it completes first).
            with self._cond:
                late = call in self._late
            if late:
                raise CallEnded(grpc.StatusCode.DEADLINE_EXCEEDED) from None
            # A call that ended (its deadline passed, gRPC refused its message, its client
            # went away) may also end its stream as if empty: only a client still there, with
            # time left, that closed its side without a message sent none.
            code = ended_code(context)
            if (isinstance(e, StopIteration) and code == grpc.StatusCode.CANCELLED
                    and context.is_active()):  # fmt: skip
                raise InvalidArgument("request", "no request message") from None
            raise CallEnded(code) from None
        finally:
            with self._cond:
                self._waiting.pop(call, None)
                self._late.discard(call)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _over_budget(self) -> bool:
        return self.slow_budget is not None and len(self._waiting) > self.slow_budget

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._waiting:
                    call = next(iter(self._waiting))
                    age = now - self._waiting[call][0]
                    slow = self._over_budget() and age >= SLOW_BODY_SECONDS
                    if age < self.timeout_s and not slow:
                        break
                    # No reference to a call's context outlives this step: it would keep the
                    # call, and its HTTP/2 stream, open (see server.door.service._unlink).
                    _, context = self._waiting.pop(call)
                    self._late.add(call)
                    if slow and age < self.timeout_s:
                        self.ended_slow += 1
                        self._penalize(context, now)
                    self._end(context, age)
                    del context
                self._forget(now)
                wait = None
                if self._waiting:  # until the oldest is late (or, over budget, too slow)
                    arrived = next(iter(self._waiting.values()))[0]
                    limit = SLOW_BODY_SECONDS if self._over_budget() else self.timeout_s
                    wait = max(0.0, arrived + limit - now)
                self._cond.wait(wait)

    def _penalize(self, context: grpc.ServicerContext, now: float) -> None:
        """Refuse the connection of `context` at the door for `penalty_seconds`."""
        try:
            peer = context.peer()
        except Exception:  # noqa: BLE001 - the call ended meanwhile: nothing to name
            return
        _, endings = self.penalties.pop(peer, (0.0, 0))
        self.penalties[peer] = (now + penalty_seconds(endings + 1), endings + 1)
        if not endings:  # once a connection: a slowloris opens many
            log.warning("%s: a request body trickled while %d calls awaited theirs: its "
                        "connection is refused for %g s", peer, len(self._waiting) + 1,
                        penalty_seconds(1))  # fmt: skip
        while len(self.penalties) > PENALIZED_PEERS:
            self.penalties.popitem(last=False)

    def _forget(self, now: float) -> None:
        """Forget the connections whose refusals ended SLOW_PENALTY_MAX_SECONDS ago (from the
        least recently penalized, up to the first that is not)."""
        while self.penalties:
            peer, (until, _) = next(iter(self.penalties.items()))
            if until + SLOW_PENALTY_MAX_SECONDS > now:
                break
            del self.penalties[peer]

    def _end(self, context: grpc.ServicerContext, age: float) -> None:
        details = f"request body not received within {age:.3g} s"
        call = getattr(getattr(context, "_rpc_event", None), "call", None)
        try:
            if call is not None:
                call.cancel(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], details)
            else:  # another grpcio layout: end it the public way (CANCELLED)
                context.cancel()
        except Exception:  # noqa: BLE001 - the call ended meanwhile
            pass


# A call its client ends this close to the server's view of its deadline ended at the
# client's deadline: the server's deadline is the client's plus the request's transit (gRPC
# sends the time left, which the server counts from arrival), so the client gives up, and
# sees DEADLINE_EXCEEDED, a transit before the server's deadline passes.
DEADLINE_SLACK_S = 0.05


def ended_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """How a call that ended while the server worked on it ended, as its client saw it: at
    its deadline (within DEADLINE_SLACK_S), else refused by gRPC itself (a message over the
    transport's size limit: gRPC answered RESOURCE_EXHAUSTED; `watch_receive_failures`
    records it), else cancelled by its client."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if getattr(getattr(context, "_state", None), _REFUSED_MESSAGE, False):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.CANCELLED


_REFUSED_MESSAGE = "_phoenix_message_refused"


def watch_receive_failures() -> bool:
    """Mark the calls whose request message gRPC itself refused (over
    `grpc.max_receive_message_length`: the client is answered RESOURCE_EXHAUSTED). Python
    sees such a call as cancelled by its client; only the failed receive tells them apart (a
    cancel or a deadline ends a receive that succeeded empty). Wraps grpcio's private
    `grpc._server._receive_message`; True if its internals allowed it."""
    try:
        from grpc import _server

        original = _server._receive_message
        if original.__code__.co_varnames[:3] != ("state", "call", "request_deserializer"):
            raise AttributeError("grpc._server._receive_message has another signature")
    except (ImportError, AttributeError) as e:
        log.warning("calls refused by gRPC's message size limit count as CANCELLED (%s)", e)
        return False
    if getattr(original, "_phoenix", False):
        return True

    def receive_message(state, call, request_deserializer):
        callback = original(state, call, request_deserializer)

        def received(event):
            if not event.success:
                setattr(state, _REFUSED_MESSAGE, True)
            return callback(event)

        return received

    receive_message._phoenix = True
    _server._receive_message = receive_message
    return True


class CallEnded(Exception):
    """The call ended while the server was still working on it (its client cancelled, its
    deadline or its receive time passed): nothing more can be sent. `code` is how it ended,
    as the client sees it."""

    def __init__(self, code: grpc.StatusCode):
        super().__init__(code.name)
        self.code = code
