"""What gRPC's transport holds and sheds is in the metrics (server.operations.transport_stats).

The transport's shedding under overload is checked call for call against what clients saw in
tests/server/test_overload.py; here: the arithmetic, and a call the transport holds that no
handler has seen yet (its body never arrives).
"""

from __future__ import annotations

import asyncio

import grpc

from server.operations.transport_stats import TransportCounts, open_streams, server_counts
from tests.server.harness import ServerProcess

RANK = "/phoenix.ranking.v1.RankingService/Rank"


def test_shed_is_what_was_started_and_neither_answered_nor_still_open():
    server = {"data": {"callsStarted": "60", "callsSucceeded": "9", "callsFailed": "2"}}
    socket = {"data": {"streamsStarted": "60", "streamsSucceeded": "9", "streamsFailed": "50"}}
    counts = TransportCounts(*server_counts(server), open_streams(socket))
    assert counts == TransportCounts(60, 9, 2, 1)
    assert counts.shed == 48
    # channelz leaves zero counts out of its JSON
    assert server_counts({"data": {}}) == (0, 0, 0) and open_streams({}) == 0
    assert (counts + counts).shed == 96
    # Counts read a moment apart never make shed negative.
    assert TransportCounts(10, 9, 2, 3).shed == 0
    # A stopped server reads as zeros: a frontend's totals are kept, its open calls are not.
    assert counts.then(TransportCounts()) == TransportCounts(60, 9, 2, 0)
    assert counts.then(TransportCounts(70, 12, 3, 5)) == TransportCounts(70, 12, 3, 5)


def _wait_for(server: ServerProcess, key: str, value: float) -> dict[str, float]:
    return server.wait_for_metrics(lambda m: m.get(key) == value, f"{key} to be {value}")


def test_a_call_whose_body_never_arrives_is_in_flight_in_the_transport(default_server):
    """A call whose handler waits for its body (until --receive-timeout-s) is in flight in
    both the transport's gauge and the service's; once the client gives up it is counted."""
    server = default_server
    before = server.metrics()

    async def scenario() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.target) as channel:
            held = asyncio.Event()

            async def never_finishes():
                await held.wait()  # headers go out, the request message never does
                yield b""

            call = channel.stream_unary(RANK)(never_finishes(), timeout=30)
            await asyncio.to_thread(_wait_for, server, "phoenix_transport_calls_in_flight", 1)
            m = await asyncio.to_thread(_wait_for, server, "phoenix_requests_in_flight", 1)
            assert m["phoenix_transport_calls_total"] == before["phoenix_transport_calls_total"] + 1
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                return grpc.StatusCode.CANCELLED
            return grpc.StatusCode.OK

    assert asyncio.run(scenario()) == grpc.StatusCode.CANCELLED
    m = _wait_for(server, "phoenix_transport_calls_in_flight", 0)
    # Nothing shed: gRPC counts the call as failed, not lost (and the service as CANCELLED).
    assert m["phoenix_transport_calls_shed_total"] == before["phoenix_transport_calls_shed_total"]
