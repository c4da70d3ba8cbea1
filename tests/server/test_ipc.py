"""Frames between frontend workers and the device process: round trips and malformed input."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import numpy as np
import pytest

from request.columns import SCHEMA
from server.door import ipc
from server.operations.checkpoint_dir import ReloadState
from server.operations.lifecycle import Phase
from server.operations.metrics import CallRecord
from server.operations.transport_stats import TransportCounts
from server.scheduling.batch_result import Scored
from tests.helpers import random_request


@pytest.fixture(scope="module")
def layout(parity_config):
    return SCHEMA.layout(parity_config)


@pytest.mark.parametrize(("n", "m"), [(0, 0), (0, 3), (7, 1), (16, 40)])
def test_a_submitted_request_arrives_identical(parity_config, layout, n, m):
    from request.encoding import encode
    from request.hashing import TableRows

    encoded = encode(random_request(np.random.default_rng(n + m), n, m), parity_config,
                     TableRows(11, 1031, 97))  # fmt: skip
    for deadline in (None, 1234.5):
        data = ipc.submit_frame(42, deadline, 3, encoded, layout)
        kind, payload = asyncio.run(_read(data))
        assert kind == ipc.SUBMIT
        call_id, got_deadline, in_flight, got = ipc.parse_submit(payload, layout)
        assert (call_id, got_deadline, in_flight) == (42, deadline, 3)
        for name in (c.name for c in SCHEMA.columns):
            want = getattr(encoded, name)
            np.testing.assert_array_equal(getattr(got, name), want)
            assert getattr(got, name).dtype == want.dtype


def test_results_carry_scores_or_a_refusal_and_the_queues_door():
    scores = np.arange(3 * 38, dtype=np.float32).reshape(3, 38)
    frame = ipc.result_frame(7, 0, ipc.Door(0.0, 12), scored=Scored(scores, "v7"))
    _, payload = asyncio.run(_read(frame))
    call_id, code, door, body = ipc.parse_result(payload, 38)
    assert (call_id, code, door, body.model_version) == (7, 0, ipc.Door(0.0, 12), "v7")
    np.testing.assert_array_equal(body.scores, scores)
    frame = ipc.result_frame(8, 8, ipc.Door(math.inf, 25), message="overloaded ü")
    _, payload = asyncio.run(_read(frame))
    assert ipc.parse_result(payload, 38) == (8, 8, ipc.Door(math.inf, 25), "overloaded ü")


def test_done_cancel_reload_and_state_frames():
    for record in (
        CallRecord("GetModelInfo", grpc.StatusCode.OK, 0.25),
        CallRecord("PredictNextActions", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.5, 2800, True,
                   "home-mixer", 0.003),
    ):  # fmt: skip
        _, payload = asyncio.run(_read(ipc.done_frame(record, 5)))
        assert ipc.parse_done(payload) == (record, 5)
    state = ReloadState(True, 1.7e9, "12")
    _, payload = asyncio.run(_read(ipc.reloaded_frame(3, 0, state)))
    assert ipc.parse_reloaded(payload) == (3, 0, state)
    _, payload = asyncio.run(_read(ipc.reloaded_frame(4, 9, message="no --checkpoint-dir")))
    assert ipc.parse_reloaded(payload) == (4, 9, "no --checkpoint-dir")
    _, payload = asyncio.run(_read(ipc.reload_frame(5, True)))
    assert ipc.parse_reload(payload) == (5, True)
    counts = TransportCounts(60, 9, 2, 1)
    refusals = {("Rank", "queue_full"): 17, ("PredictNextActions", "capacity"): 3,
                (None, "capacity"): 2}  # fmt: skip
    _, payload = asyncio.run(_read(ipc.transport_frame(counts, refusals)))
    assert ipc.parse_transport(payload) == (counts, refusals)
    kind, payload = asyncio.run(_read(ipc.cancel_frame(2**40 + 7)))
    assert (kind, ipc.parse_cancel(payload)) == (ipc.CANCEL, 2**40 + 7)
    _, payload = asyncio.run(_read(ipc.state_frame(Phase.DRAINING, None)))
    assert ipc.parse_state(payload) == (Phase.DRAINING, None)
    _, payload = asyncio.run(_read(ipc.state_frame(Phase.SERVING, "version 3 withdrawn: é")))
    assert ipc.parse_state(payload) == (Phase.SERVING, "version 3 withdrawn: é")


def test_a_submit_frame_with_stray_bytes_is_refused(parity_config, layout):
    from request.encoding import encode
    from request.hashing import TableRows

    encoded = encode(random_request(np.random.default_rng(1), 2, 2), parity_config,
                     TableRows(11, 1031, 97))  # fmt: skip
    _, payload = asyncio.run(_read(ipc.submit_frame(1, math.nan, 0, encoded, layout) + b""))
    with pytest.raises(ValueError, match="stray"):
        ipc.parse_submit(memoryview(bytes(payload) + b"\x00"), layout)


def test_an_oversized_frame_length_is_refused():
    data = ipc._FRAME.pack(ipc.MAX_FRAME_BYTES + 1, ipc.SUBMIT)
    with pytest.raises(ValueError, match="frame of"):
        asyncio.run(_read(data))


async def _read(data: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await ipc.read_frame(reader)


def test_a_frontend_refuses_at_its_door_while_the_devices_latest_answer_says_full():
    from server.door.frontend_worker import DeviceLink
    from server.errors import QueueFull

    async def main():
        link = DeviceLink(asyncio.StreamReader(), None, None, 38)
        link.precheck(None)  # nothing heard yet: open
        link._resolve(1, 8, ipc.Door(math.inf, 40), "queue full")
        with pytest.raises(QueueFull) as refused:
            link.precheck(None)
        assert refused.value.retry_after_ms == 40
        link._resolve(2, 0, ipc.Door(0.0, 5), None)  # a later answer: room again
        link.precheck(None)
        # Full for calls with under 3 s to their deadline: one with 10 s is let through.
        link._resolve(3, 8, ipc.Door(3.0, 40), "queue full")
        with pytest.raises(QueueFull):
            link.precheck(time.monotonic() + 1.0)
        link.precheck(time.monotonic() + 10.0)
        assert link.fullness_s() == 3.0
        link._resolve(4, 8, ipc.Door(math.inf, 1), "queue full")
        await asyncio.sleep(0.002)  # the verdict lasts its retry hint, no longer
        link.precheck(None)
        assert link.fullness_s() == 0.0

    asyncio.run(main())
