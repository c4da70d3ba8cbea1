"""The gRPC layer in-process, over a real channel: unexpected errors become INTERNAL."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model import load_checkpoint
from request.hashing import hash_rows
from server.config import BatcherConfig, Limits, ServerConfig
from server.contracts.convert import logits_from_pb, raw_request_to_pb
from server.door.service import ModelFacts
from server.door.transport import GrpcFront
from server.engine.runner import ModelRunner
from server.operations.metrics import Metrics, MetricsRecorder
from server.publication import describe
from server.rpc import ranking_pb2_grpc
from server.scheduling.batcher import Batcher
from tests.helpers import random_request, runner_config

POISON_USER = 666


class FlakyRunner(ModelRunner):
    """The real runner, except that a batch holding the poison user's request blows up."""

    def run(self, packed, wanted=None):
        if any(int(p.request.user_rows[0]) == self.poison_row for p in packed.pieces):
            raise ValueError("simulated bug in the runner")
        return super().run(packed, wanted)


@pytest.fixture(scope="module")
def runner(parity_checkpoint):
    ckpt = load_checkpoint(parity_checkpoint)
    runner = FlakyRunner(ckpt, runner_config(2, (8,)))
    runner.poison_row = int(hash_rows(np.array([POISON_USER], np.uint64), 2, ckpt.rows.user)[0, 0])
    runner.warmup()
    return runner


def test_unexpected_errors_are_internal_with_the_request_id(runner, caplog):
    async def main():
        metrics = Metrics(CollectorRegistry())
        batcher = Batcher(runner, BatcherConfig(), metrics)
        batcher.start()
        facts = ModelFacts(runner.config, runner.model.checkpoint.rows, describe(runner, Limits()))
        config = ServerConfig(host="127.0.0.1", port=0)
        front = GrpcFront(facts, batcher, MetricsRecorder(metrics), config,
                          asyncio.get_running_loop())  # fmt: skip
        await front.start()
        await front.serve()
        port = front.port
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ranking_pb2_grpc.RankingServiceStub(channel)
                poison = raw_request_to_pb(random_request(np.random.default_rng(1), 3, 5))
                poison.user_id, poison.request_id = POISON_USER, "req-poison"
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.Rank(poison)
                assert error.value.code() == grpc.StatusCode.INTERNAL
                assert "req-poison" in error.value.details()
                assert "simulated" not in error.value.details()  # no internals leak out
                good = raw_request_to_pb(random_request(np.random.default_rng(2), 3, 5))
                assert logits_from_pb(await stub.Rank(good)).shape == (5, 19)
        finally:
            front.server.stop(0).wait()
            await batcher.stop()

    asyncio.run(main())
    logged = [
        r for r in caplog.records if r.levelname == "ERROR" and "Rank failed" in r.getMessage()
    ]
    assert logged and logged[0].fields["request_id"] == "req-poison"
    assert "simulated bug" in caplog.text
