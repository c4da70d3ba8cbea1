"""What bounds a call at the transport, before the service decodes a byte of it.

How many at once. gRPC's (synchronous) server takes at most `maximum_concurrent_rpcs` calls
at once and refuses the next ones on its polling thread, before a handler thread or the
request body is touched: about 50 us of CPU a call, where a refusal by a handler costs about
three times that and one by the asyncio server four (bench/host_path.py's door section).
grpcio sends those refusals as RESOURCE_EXHAUSTED without a retry hint; `install_retry_hint`
makes them carry `grpc-retry-pushback-ms`, from a function of the serving process (how long
its queue takes to drain), like the service's own refusals. It replaces grpcio's private
`grpc._server._reject_rpc` (the only place the refusal is sent), checked against the
installed version at start: a grpcio whose internals changed keeps its own refusal, without
the hint, and says so in the log; `tests/server/test_overload.py` holds the hint to being
there.

How long a body may take. A call whose request body never arrives would hold a handler
thread (and a place among the calls at once) until its connection ends. Handlers take their
request as a stream (`ReceiveWatchdog.receive`), so they start on the call's headers; one
watchdog thread ends every call whose body has not arrived within `receive_timeout_s` with
DEADLINE_EXCEEDED (through the call object grpcio keeps on the handler's context: grpcio's
public `cancel()` could only answer CANCELLED).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from server.errors import InvalidArgument

log = logging.getLogger("phoenix.server")

# The hint of a transport refusal, in milliseconds: a function of the serving process.
_retry_hint: Callable[[], int] = lambda: 100  # noqa: E731
_installed = False


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
            metadata = (("grpc-retry-pushback-ms", str(max(1, int(_retry_hint())))),)
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
    watched call costs a heap push and two lock acquisitions."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._heap: list[tuple[float, int]] = []  # (when its body is late, call)
        self._waiting: dict[int, grpc.ServicerContext] = {}  # calls whose body is awaited
        self._late: set[int] = set()  # calls this watchdog ended, until their handler sees it
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
            self._waiting[call] = context
            heapq.heappush(self._heap, (time.monotonic() + self.timeout_s, call))
            if self._heap[0][1] == call:
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
            if isinstance(e, StopIteration):
                raise InvalidArgument("request", "no request message") from None
            raise CallEnded(grpc.StatusCode.CANCELLED) from None  # its client is gone
        finally:
            with self._cond:
                self._waiting.pop(call, None)
                self._late.discard(call)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, call = heapq.heappop(self._heap)
                    context = self._waiting.pop(call, None)
                    if context is not None:  # still waiting for its body
                        self._late.add(call)
                        self._end(context)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)

    def _end(self, context: grpc.ServicerContext) -> None:
        details = f"request body not received within {self.timeout_s:g} s"
        call = getattr(getattr(context, "_rpc_event", None), "call", None)
        try:
            if call is not None:
                call.cancel(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], details)
            else:  # another grpcio layout: end it the public way (CANCELLED)
                context.cancel()
        except Exception:  # noqa: BLE001 - the call ended meanwhile
            pass


class CallEnded(Exception):
    """The call ended while the server was still working on it (its client cancelled, its
    deadline or its receive time passed): nothing more can be sent. `code` is how it ended,
    as the client sees it."""

    def __init__(self, code: grpc.StatusCode):
        super().__init__(code.name)
        self.code = code
