"""Ordinary load against the real server: every call answered, none CANCELLED.

Closed-loop clients (each sends its next call once the last is answered) up to the server's
calls at once get OK (or an admission refusal), never a transport shed; past it they get
RESOURCE_EXHAUSTED with a retry hint, and honouring it they all get through. A request body
that never arrives holds its place for the receive timeout only. A call that ends (cancelled,
or its client gone) before its batch runs is not computed, in every mode, and nothing about
it is logged as a failure.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from server.contracts.convert import raw_request_to_columnar_pb
from server.scheduling.admission import MIN_RETRY_MS
from tests.helpers import random_request
from tests.server import xai_forms
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

RANK = "/phoenix.ranking.v1.RankingService/Rank"
REQUESTS = "phoenix_requests_total{{code={},method=Rank}}"


def _payloads(count: int, candidates: int = 32) -> list[bytes]:
    rng = np.random.default_rng(11)
    return [
        raw_request_to_columnar_pb(random_request(rng, 24, candidates)).SerializeToString()
        for _ in range(count)
    ]


async def _closed_loop(target: str, payloads: list[bytes], clients: int, answers_each: int,
                       honour_pushback: bool) -> list[tuple[grpc.StatusCode, list[int]]]:  # fmt: skip
    """`clients` closed loops until each has `answers_each` OK answers (or, not honouring
    retry hints, that many calls): [(code, retry hints)] of every call."""
    results: list[tuple[grpc.StatusCode, list[int]]] = []
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    try:

        async def client(i: int) -> None:
            rank = channels[i % len(channels)].unary_unary(RANK)
            done = 0
            while done < answers_each:
                call = rank(payloads[i % len(payloads)], timeout=30)
                try:
                    await call
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                hints = [int(v) for k, v in await call.trailing_metadata() or ()
                         if k == "grpc-retry-pushback-ms"]  # fmt: skip
                results.append((code, hints))
                if code == grpc.StatusCode.OK or not honour_pushback:
                    done += 1
                elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and hints:
                    await asyncio.sleep(hints[0] / 1000)
                else:
                    done = answers_each  # anything else: stop, the test reports it

        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        for channel in channels:
            await channel.close()
    return results


def _reached_service(before: dict, after: dict) -> float:
    keys = {k for k in (*before, *after) if k.startswith("phoenix_requests_total{")}
    return sum(after.get(k, 0) - before.get(k, 0) for k in keys if "method=Rank" in k)


def _settled(server: ServerProcess, calls: float) -> dict[str, float]:
    """The metrics once the transport has seen `calls` calls in all and none is in flight."""
    return server.wait_for_metrics(
        lambda m: (
            m["phoenix_transport_calls_total"] >= calls
            and not m["phoenix_transport_calls_in_flight"]
        ),
        "the transport's counts to settle",
    )


def test_48_closed_loop_clients_get_answers_not_sheds(default_server):
    server = default_server
    before = server.metrics()
    results = asyncio.run(_closed_loop(server.target, _payloads(8), 48, 12, False))
    codes = [code for code, _ in results]
    # Within the transport's capacity (64 calls at once by default): every call reaches the
    # service, and ordinary load is below admission's bound too.
    assert set(codes) == {grpc.StatusCode.OK}, {c.name: codes.count(c) for c in set(codes)}
    m = _settled(server, before["phoenix_transport_calls_total"] + len(results))
    assert m["phoenix_transport_calls_total"] - before["phoenix_transport_calls_total"] == len(
        results
    )
    assert _reached_service(before, m) == len(results)  # no transport refusal
    assert m["phoenix_transport_calls_shed_total"] == before["phoenix_transport_calls_shed_total"]
    ok = REQUESTS.format("OK")
    assert m[ok] - before.get(ok, 0) == len(results)


def test_256_closed_loop_clients_past_a_small_capacity_honouring_retry_hints_all_get_through(
    compilation_cache,
):
    # 256 calls at once against a server taking 16: the calls past them are refused by the
    # transport itself, before any handler, every refusal with a hint and counted; clients
    # that wait as told all get their answers, and nothing is CANCELLED.
    with ServerProcess(*SMALL_PLAN, "--max-concurrent-rpcs", "16", env=compilation_cache) as server:
        before = server.metrics()
        results = asyncio.run(_closed_loop(server.target, _payloads(8), 256, 3, True))
        codes = [code for code, _ in results]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, {
            c.name: codes.count(c) for c in set(codes)
        }
        assert codes.count(grpc.StatusCode.OK) == 256 * 3
        refused = [hints for code, hints in results if code != grpc.StatusCode.OK]
        assert refused, "256 calls at once against 16 places: some must be refused"
        assert all(len(h) == 1 and MIN_RETRY_MS <= h[0] <= 10_000 for h in refused), refused[:5]
        m = _settled(server, before["phoenix_transport_calls_total"] + len(results))
        assert m["phoenix_transport_calls_total"] - before["phoenix_transport_calls_total"] == (
            len(results)
        )
        assert m["phoenix_transport_calls_shed_total"] == 0
        # Every call counted as its client saw it, those refused before a handler included.
        assert _reached_service(before, m) == len(results)
        key = "phoenix_admission_refusals_total{reason=capacity}"
        assert 0 < m.get(key, 0) - before.get(key, 0) <= len(refused)
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("clients", [64, 96, 256])
def test_closed_loop_clients_honouring_retry_hints_all_get_through_without_cancelled(
    compilation_cache, clients
):
    # Closed loops of 48-candidate calls with 10 s deadlines, honouring retry hints, against the
    # default capacity (80 calls at once: server.door.call_limits.MAX_AUTO_CAPACITY says why): up to
    # it every call is answered OK at its first try; past it the calls over are refused
    # RESOURCE_EXHAUSTED at the door with a hint of at least MIN_RETRY_MS, and, waiting as
    # told, every client gets all its answers. Never CANCELLED, nothing shed.
    with ServerProcess(*SMALL_PLAN, env=compilation_cache) as server:
        before = server.metrics()
        results = asyncio.run(_closed_loop(server.target, _payloads(8, 48), clients, 4, True))
        codes = [code for code, _ in results]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, {
            c.name: codes.count(c) for c in set(codes)
        }
        assert codes.count(grpc.StatusCode.OK) == clients * 4
        share = codes.count(grpc.StatusCode.OK) / len(codes)
        print(f"{clients} clients: {len(codes)} calls, {share:.3f} OK at the first try")
        if clients <= 64:
            assert share == 1.0
        hints = [h for code, h in results if code != grpc.StatusCode.OK]
        assert all(len(h) == 1 and h[0] >= MIN_RETRY_MS for h in hints), hints[:5]
        m = _settled(server, before["phoenix_transport_calls_total"] + len(results))
        assert (
            m["phoenix_transport_calls_shed_total"] == before["phoenix_transport_calls_shed_total"]
        )
        cancelled = REQUESTS.format("CANCELLED")
        assert m.get(cancelled, 0) == before.get(cancelled, 0)
        assert _reached_service(before, m) == len(results)  # every call counted


def test_a_request_body_that_never_arrives_takes_no_place_of_a_call_that_has_its_body(
    compilation_cache,
):
    # 4 calls at once, and 4 calls whose body never comes: they wait in places of their own
    # (server.door.call_limits.RECEIVE_PLACES), so the next call is served while they wait, and the
    # receive timeout ends them (DEADLINE_EXCEEDED, long before their own 60 s deadline).
    timeout_s = 2.0
    with ServerProcess(*SMALL_PLAN, "--max-concurrent-rpcs", "4", "--receive-timeout-s",
                       str(timeout_s), env=compilation_cache) as server:  # fmt: skip
        payload = _payloads(1)[0]
        key = REQUESTS.format("DEADLINE_EXCEEDED")
        before = server.metrics().get(key, 0)

        async def scenario():
            async with grpc.aio.insecure_channel(server.target) as channel:
                stalled = [channel.stream_unary(RANK)(timeout=60) for _ in range(4)]
                for call in stalled:  # headers sent, the body never
                    await call.wait_for_connection()
                started = time.monotonic()
                while server.metrics()["phoenix_transport_calls_in_flight"] < 4:
                    assert time.monotonic() - started < timeout_s
                served = await channel.unary_unary(RANK)(payload, timeout=10)
                served_s = time.monotonic() - started
                ended = []
                for call in stalled:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await call
                    ended.append((e.value.code(), e.value.details(), time.monotonic() - started))
                return ended, served, served_s

        ended, served, served_s = asyncio.run(scenario())
        assert served
        assert {code for code, _, _ in ended} == {grpc.StatusCode.DEADLINE_EXCEEDED}, ended
        assert all("not received within" in details for _, details, _ in ended), ended
        assert served_s < min(seconds for _, _, seconds in ended), (served_s, ended)
        assert all(seconds < timeout_s + 2 for _, _, seconds in ended), ended
        server.wait_for_metrics(lambda m: m.get(key, 0) == before + 4, "4 counted")
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "frontend-workers"])
def test_a_call_that_ends_before_its_batch_runs_is_not_computed(compilation_cache, workers):
    # One-row batches of 8 candidates, and two PredictNextActions calls of 64 users with 16
    # candidates each ahead: the queue serves its 128 requests a chunk each in turn, so four
    # small calls queued behind them wait for 128 device calls (a second or so), and are
    # cancelled long before that. One of the large calls is cancelled while its requests run:
    # its users that the device finished before the cancel reached it (with frontend workers
    # the first few users may arrive one by one and run alone) are scored, those in the (at
    # most two) batches in flight are computed and discarded, the rest are dropped unrun.
    with ServerProcess("--max-batch-size", "1", "--candidate-buckets", "8", "--max-queue-ms",
                       "60000", "--frontend-workers", str(workers),
                       env=compilation_cache) as server:  # fmt: skip
        rng = np.random.default_rng(4)
        users = [xai_forms.expressible(random_request(rng, 16, 16), False) for _ in range(64)]
        large = xai_forms.request(users, "orderedAggregatedUserActionsList")
        small = raw_request_to_columnar_pb(random_request(rng, 8, 5))  # 5: not a multiple of 16
        before = server.metrics()
        xai, stub = server.client.xai, server.client.stub
        larges = [xai.PredictNextActions.future(large, timeout=120) for _ in range(2)]
        server.wait_for_metrics(lambda m: m["phoenix_queue_depth"] >= 100, "users queued", 60)
        smalls = [stub.Rank.future(small, timeout=120) for _ in range(4)]
        server.wait_for_metrics(lambda m: m["phoenix_queue_depth"] >= 100 + 4, "smalls queued")
        for f in [larges[0], *smalls]:
            f.cancel()
        assert len(larges[1].result().distributionSets) == 64
        cancelled = "phoenix_requests_total{code=CANCELLED,method=%s}"
        dropped = "phoenix_queue_dropped_total{reason=cancelled}"
        delta = lambda m, key: m.get(key, 0) - before.get(key, 0)  # noqa: E731
        m = server.wait_for_metrics(
            lambda m: (
                delta(m, cancelled % "Rank") == 4
                and delta(m, cancelled % "PredictNextActions") == 1
                and not m["phoenix_queue_depth"]
            ),
            "the cancelled calls counted and their requests dropped",
        )
        # None of the small calls ran (5 candidates each: the count stays a multiple of 16);
        # of the cancelled large call, the users finished before the cancel were scored and
        # all but those in flight at the cancel were dropped.
        scored = delta(m, "phoenix_candidates_scored_total")
        assert scored % 16 == 0, scored
        finished = scored // 16 - 64
        assert 0 <= finished < 32, finished
        assert 4 + 64 - finished - 2 <= delta(m, dropped) <= 4 + 64 - finished, (scored, m)
        assert "Traceback" not in server.log()
