"""Overload and admission against the real server: refuse early, never compute late, count all.

An open-loop burst far above capacity (requests sent on a clock, whatever the answers) must
end every call in OK, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED (never CANCELLED); refusals must
come back at once with a retry hint, the transport's as the service's; the queue's work must
stay within its bound; the server's counters must agree with what the clients saw; and the
server must serve normally right after.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import numpy as np
import pytest

from server.config import BatcherConfig
from server.contracts.convert import raw_request_to_columnar_pb, raw_request_to_pb
from server.rpc import ranking_pb2 as pb
from server.scheduling.admission import queue_bound_s
from tests.helpers import random_request
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

RANK = "/phoenix.ranking.v1.RankingService/Rank"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
MAX_QUEUE_MS = 40
CANDIDATES = 192


async def _burst(target: str, payloads: list[bytes], rate: float, timeout: float):
    """Send `payloads` open loop at `rate` per second; [(code, seconds, pushback ms)]."""
    async with grpc.aio.insecure_channel(target) as channel:
        rank = channel.unary_unary(RANK)
        await channel.channel_ready()

        async def one(data: bytes):
            started = time.monotonic()
            call = rank(data, timeout=timeout)
            try:
                await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as e:
                code = e.code()
            trailers = await call.trailing_metadata() or ()
            pushback = [int(v) for k, v in trailers if k == "grpc-retry-pushback-ms"]
            return code, time.monotonic() - started, pushback

        start, tasks = time.monotonic(), []
        for i, data in enumerate(payloads):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(data)))
        return await asyncio.gather(*tasks)


def _wait_for_metric(server: ServerProcess, key: str, expected: float) -> dict[str, float]:
    """The metrics once `key` has reached `expected` (and exactly `expected`)."""
    m = server.wait_for_metrics(lambda m: m.get(key, 0) >= expected, f"{key} to reach {expected}")
    assert m.get(key, 0) == expected, (key, m.get(key), expected)
    return m


def _counts(server: ServerProcess) -> dict[str, float]:
    m = server.metrics()
    return {k: v for k, v in m.items() if k.startswith("phoenix_requests_total{")}


# Frontend workers, and the calls a gRPC server takes at once: the default, and a small one
# (most refusals are then the transport's own, before any handler runs). Either way every
# call ends OK, RESOURCE_EXHAUSTED with a retry hint, or DEADLINE_EXCEEDED: never CANCELLED.
SETUPS = {"one-process": (0, None), "transport-limit": (0, 16), "frontend-workers": (2, None)}


@pytest.mark.parametrize("setup", SETUPS)
def test_an_open_loop_burst_far_above_capacity_is_shed_not_collapsed(compilation_cache, setup):
    workers, calls_at_once = SETUPS[setup]
    flags = (*SMALL_PLAN, "--max-queue-ms", str(MAX_QUEUE_MS), "--frontend-workers", str(workers))
    if calls_at_once is not None:
        flags += ("--max-concurrent-rpcs", str(calls_at_once))
    with ServerProcess(*flags, env=compilation_cache) as server:
        # 192 candidates (6 windows of 32): a few hundred requests/s fill the device, so the
        # Python load generator's 800/s is far above capacity on any machine of this kind.
        rng = np.random.default_rng(5)
        requests = [random_request(rng, 64, CANDIDATES) for _ in range(8)]
        payloads = [
            raw_request_to_columnar_pb(requests[i % 8]).SerializeToString() for i in range(1200)
        ]
        before = _counts(server)
        before_transport = server.metrics()
        results = asyncio.run(_burst(server.target, payloads, rate=800, timeout=2.0))

        codes = [code for code, _, _ in results]
        assert set(codes) <= ALLOWED, {c.name for c in set(codes) - ALLOWED}
        ok, refused = (
            codes.count(grpc.StatusCode.OK),
            codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED),
        )
        assert ok > 50 and refused > 100, (ok, refused)
        refusal_seconds = [s for code, s, _ in results if code != grpc.StatusCode.OK]
        # Refusals come back in a fraction of the 2 s deadline, not at it. (The 50 ms target is
        # measured by bench/host_path.py with ghz; here a Python load generator shares the
        # test machine's two cores with the server, so the bound is looser.)
        median = statistics.median(refusal_seconds)
        assert median < 0.15 and max(refusal_seconds) < 1.9, (median, max(refusal_seconds))
        # Every refusal carries a retry hint, the service's and the transport's alike.
        hints = [p for code, _, p in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert all(len(h) == 1 and 1 <= h[0] <= 10_000 for h in hints), hints[:5]

        # Every call is counted: those that reached the service by their status, those the
        # transport refused from gRPC's own counts (channelz: a frontend reports its counts
        # every second, hence waiting for a settled report).
        calls = before_transport["phoenix_transport_calls_total"] + len(payloads)
        m = server.wait_for_metrics(
            lambda m: (
                not m["phoenix_transport_calls_in_flight"]
                and m["phoenix_transport_calls_total"] >= calls
            ),
            "the transport's counts to settle",
        )
        assert m["phoenix_transport_calls_total"] == calls
        assert (
            m["phoenix_transport_calls_shed_total"]
            == before_transport["phoenix_transport_calls_shed_total"]
        )  # nothing shed: no CANCELLED
        served = 0
        for code in ALLOWED:
            key = f"phoenix_requests_total{{code={code.name},method=Rank}}"
            served += m.get(key, 0) - before.get(key, 0)
        transport_refused = len(payloads) - served
        assert transport_refused >= 0
        # Refused requests were never computed; accepted ones all were.
        assert m["phoenix_candidates_scored_total"] >= CANDIDATES * ok
        refusals = sum(v for k, v in m.items() if k.startswith("phoenix_admission_refusals_total{"))
        assert refusals + transport_refused >= refused
        # The queue never held more work than its bound for these 2 s deadlines (plus one
        # request admitted to an empty queue, and the estimate moving while work waits).
        bound = queue_bound_s(MAX_QUEUE_MS / 1000, 2.0, BatcherConfig().queue_deadline_share)
        assert m["phoenix_queue_work_peak_seconds"] <= 2 * bound
        # Recovery: the next request is served at once.
        started = time.monotonic()
        response = server.client.rank(raw_request_to_pb(requests[0]), timeout=5)
        assert len(response.scores) == CANDIDATES and time.monotonic() - started < 1.0


def test_a_request_that_cannot_meet_its_deadline_is_refused_uncomputed(compilation_cache):
    # One-row batches of 8 candidates: 2,800-candidate requests keep the device busy for
    # seconds, so the work ahead of a later request is known to exceed its 50 ms deadline.
    with ServerProcess("--max-batch-size", "1", "--candidate-buckets", "8",
                       "--max-queue-ms", "60000", env=compilation_cache) as server:  # fmt: skip
        heavy = raw_request_to_columnar_pb(random_request(np.random.default_rng(1), 64, 2800))
        small = raw_request_to_columnar_pb(random_request(np.random.default_rng(2), 8, 8))
        futures = [server.client.stub.Rank.future(heavy, timeout=120) for _ in range(3)]
        while server.metrics()["phoenix_queue_depth"] < 2:
            assert not all(f.done() for f in futures)
        before = server.metrics()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            server.client.rank(small, timeout=0.05)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "not computed" in refused.value.details(), refused.value.details()
        assert time.monotonic() - started < 0.05
        for f in futures:
            assert len(f.result().scores) == 2800
        m = server.metrics()
        assert (
            m["phoenix_admission_refusals_total{reason=deadline}"]
            - before.get("phoenix_admission_refusals_total{reason=deadline}", 0)
            == 1
        )
        assert m["phoenix_candidates_scored_total"] == 3 * 2800


def test_bytes_that_do_not_parse_are_invalid_argument_and_counted(default_server):
    before = _counts(default_server)
    channel = default_server.client.channel
    for data in (b"\x22\x03\xff\xfe\xfd", b"\xff\xff\xff\xff"):
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary(RANK)(data, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid RankRequest" in e.value.details()
        assert "<class" not in e.value.details()
    key = "phoenix_requests_total{code=INVALID_ARGUMENT,method=Rank}"
    _wait_for_metric(default_server, key, before.get(key, 0) + 2)


def test_a_call_the_client_cancels_is_counted_cancelled(default_server):
    heavy = raw_request_to_pb(random_request(np.random.default_rng(3), 64, 2800))
    key = "phoenix_requests_total{code=CANCELLED,method=Rank}"
    before = _counts(default_server).get(key, 0)
    future = default_server.client.stub.Rank.future(heavy, timeout=60)
    while default_server.metrics()["phoenix_requests_in_flight"] < 1:
        assert not future.done()
    future.cancel()
    _wait_for_metric(default_server, key, before + 1)
    assert default_server.client.health() == "SERVING"


@pytest.mark.parametrize("form", ["rows", "columns"])
def test_both_request_forms_score_identically(default_server, form):
    request = random_request(np.random.default_rng(4), 20, 70, "same")
    to_pb = raw_request_to_pb if form == "rows" else raw_request_to_columnar_pb
    got = default_server.client.rank(to_pb(request))
    want = default_server.client.rank(raw_request_to_pb(request))
    assert isinstance(got, pb.RankResponse) and got == want and len(got.scores) == 70
