"""What gRPC's own transport saw: calls it accepted, holds now, and shed before any handler.

Under overload the calls a handler never sees are the transport's: past `--max-pending-calls`
gRPC's C core ends new calls itself, with status CANCELLED, in microseconds, before Python
can count them (server.config says why that short backlog is the default). gRPC's channelz
registry does see them, and this module reads it (at scrape time, and every second in a
frontend worker: nothing per call):

    started    calls the transport accepted, any method (channelz `callsStarted`)
    succeeded  calls that ended OK                    (`callsSucceeded`)
    failed     calls gRPC's server took from the transport that ended otherwise: refused
               (by us, or by its --max-concurrent-rpcs limit), invalid, cancelled by the
               client, past their deadline            (`callsFailed`)
    open       HTTP/2 streams open now, summed over the server's connections: calls waiting in
               the transport's backlog, being handled, or being answered

A call the transport sheds is counted as started and as a failed *stream* of its connection,
but never as a succeeded or failed *call* (measured on grpcio 1.85;
`tests/server/test_overload.py` checks the count call for call against what clients saw), so

    shed = started - succeeded - failed - open.

Reading is not atomic, so `open` is read before and after the server counters and the larger
taken: every interleaving then errs towards fewer shed calls, never more, and the exported
counter (server.operations.metrics) only ever rises.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

try:  # channelz lives in gRPC's Cython layer; no public Python API reads it in-process
    from grpc._cython import cygrpc as _cygrpc

    _channelz = (
        _cygrpc.channelz_get_servers,
        _cygrpc.channelz_get_server_sockets,
        _cygrpc.channelz_get_socket,
    )
except (ImportError, AttributeError):  # pragma: no cover - another grpcio layout
    _channelz = None

MAX_SOCKETS = 10_000  # connections read per server and read


@dataclass(frozen=True)
class TransportCounts:
    """Calls of every method, as gRPC's transport counted them (see the module docstring)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    open: int = 0

    @property
    def shed(self) -> int:
        """Calls the transport ended before a handler saw them."""
        return max(0, self.started - self.succeeded - self.failed - self.open)

    def then(self, later: TransportCounts) -> TransportCounts:
        """A later reading of the same server: its totals never go down (a server that has
        stopped reads as zeros, and must not take back what it counted), `open` is the
        latest."""
        return TransportCounts(
            max(self.started, later.started),
            max(self.succeeded, later.succeeded),
            max(self.failed, later.failed),
            later.open,
        )

    def __add__(self, other: TransportCounts) -> TransportCounts:
        return TransportCounts(
            self.started + other.started,
            self.succeeded + other.succeeded,
            self.failed + other.failed,
            self.open + other.open,
        )


def server_counts(server: dict) -> tuple[int, int, int]:
    """(started, succeeded, failed) of one channelz Server message (its JSON form)."""
    data = server.get("data", {})
    return tuple(int(data.get(k, 0)) for k in ("callsStarted", "callsSucceeded", "callsFailed"))


def open_streams(socket: dict) -> int:
    """Streams open now on one channelz Socket message (its JSON form)."""
    data = socket.get("data", {})
    started, succeeded, failed = (
        int(data.get(k, 0)) for k in ("streamsStarted", "streamsSucceeded", "streamsFailed")
    )
    return max(0, started - succeeded - failed)


def _servers() -> list[dict]:
    return json.loads(_channelz[0](0)).get("server", [])


def _open(server_id: int) -> int:
    refs = json.loads(_channelz[1](server_id, 0, MAX_SOCKETS)).get("socketRef", [])
    total = 0
    for ref in refs:
        try:
            total += open_streams(json.loads(_channelz[2](int(ref["socketId"])))["socket"])
        except (ValueError, KeyError):  # the connection closed between the two reads
            continue
    return total


def read() -> TransportCounts | None:
    """This process's gRPC servers, summed; None where channelz cannot be read.

    Costs about 0.3 ms per open connection (channelz renders each one as JSON, holding the
    GIL): call it at scrape time or off the event loop, never per call."""
    if _channelz is None:
        return None
    try:
        ids = [int(s["ref"]["serverId"]) for s in _servers()]
        before = {i: _open(i) for i in ids}
        total = TransportCounts()
        for server in _servers():
            i = int(server["ref"]["serverId"])
            if i not in before:  # started between the reads: read it the next time
                continue
            started, succeeded, failed = server_counts(server)
            total += TransportCounts(started, succeeded, failed, max(before[i], _open(i)))
        return total
    except Exception:  # noqa: BLE001 - metrics must never break a scrape
        log.exception("reading gRPC's channelz counts failed")
        return None
