"""Budgeted inflation (server/contracts/inflate.py) and the bounds it gives `xai.decode_request`: zstd
within a call's budget, refusals before allocation, amplification as a measured property of
every history form, and the hostile corpus (tests/server/hostile.py) decoded directly."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import re
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.config import Limits
from server.contracts import convert, inflate, xai
from server.contracts.inflate import Budget
from server.errors import InvalidArgument
from server.rpc import recsys_pb2 as xpb
from tests.helpers import random_request, varint
from tests.server import hostile, xai_forms
from tests.server.hostile import BLOCK, GiB, skippable, zstd_zeros

MiB = 1 << 20
FIELD = "sequences[0].userActionsData.compressedUserActions.data"


def inflated(data: bytes, left: int = MiB) -> tuple[bytes, Budget]:
    budget = Budget(left, left)
    return inflate.zstd(data, budget, "x"), budget


# -- the budget and zstd -------------------------------------------------------------------


def test_a_calls_budget_is_the_request_limit_less_the_request():
    limits = Limits(max_request_bytes=1000)
    assert Budget.for_request(300, limits).left == 700
    assert Budget.for_request(5000, limits).left == 0
    budget = Budget.for_request(300, limits)
    budget.draw(600, "a")
    with pytest.raises(InvalidArgument, match="^b: inflates to 101 bytes, over the 100 left"):
        budget.draw(101, "b")
    with pytest.raises(InvalidArgument, match="^c: inflates to more than the 100 bytes left"):
        budget.draw(101, "c", exact=False)


def test_zstd_frames_of_every_kind_inflate_to_their_content():
    content = bytes(range(256)) * 40
    one = zstandard.ZstdCompressor().compress(content)  # declares its size
    stream = zstandard.ZstdCompressor().compressobj()
    undeclared = stream.compress(content) + stream.flush()
    assert zstandard.frame_content_size(undeclared) == -1
    for data, want in ((one, content), (undeclared, content), (one + undeclared, content * 2),
                       (skippable(3, b"abc") + one, content), (skippable(0), b""),
                       (zstd_zeros(3 * BLOCK + 5), bytes(3 * BLOCK + 5))):  # fmt: skip
        out, budget = inflated(data)
        assert out == want and budget.left == MiB - len(want)


@pytest.mark.parametrize("declared", [2 * GiB, 1 << 40, 1 << 63, 2**64 - 3])
def test_a_declared_size_over_the_budget_is_refused_before_anything_is_allocated(declared):
    data = zstd_zeros(BLOCK, declared, blocks=4)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match=f"^x: inflates to {declared} bytes"):
            inflated(data)
        assert tracemalloc.get_traced_memory()[1] < 64 * 1024
    finally:
        tracemalloc.stop()


def test_output_without_a_declared_size_stops_just_past_the_budget():
    for data in (zstd_zeros(2 * GiB), skippable(4, b"abcd") + zstd_zeros(2 * GiB),
                 zstd_zeros(MiB // 2, MiB // 2) * 3):  # fmt: skip
        tracemalloc.start()
        try:
            with pytest.raises(InvalidArgument, match="^x: inflates to more than the 1048576"):
                inflated(data)
            # counting holds a read and the next: two reads' worth at most
            assert tracemalloc.get_traced_memory()[1] < 2 * inflate.READ_BYTES + 64 * 1024
        finally:
            tracemalloc.stop()


@pytest.mark.parametrize("data, message", [
    (b"", "not zstd"), (b"garbage!", "not zstd"), (b"\x28\xb5\x2f\xfd", "not zstd"),
    (b"\x28\xb5\x2f\xfd" + bytes(range(256)), "not valid zstd"),
    (zstandard.ZstdCompressor().compress(bytes(range(256)) * 9)[:-4], "cut short"),
    (zstandard.ZstdCompressor().compress(b"x" * 99) + b"junk", "not valid zstd"),
    (skippable(2**32 - 1, b"abcd"), "cut short"),
    (zstd_zeros(1000, window_log=24), "too much memory"),  # over MAX_WINDOW_BYTES
    (skippable(0) * (inflate.MAX_FRAMES + 1), "more than 64 frames"),
    (zstd_zeros(2 * BLOCK, 1000), "not valid zstd"),  # declares less than it holds
])  # fmt: skip
def test_bytes_that_are_not_zstd_within_the_bounds_are_refused(data, message):
    with pytest.raises(InvalidArgument, match=message):
        inflated(data)


def test_the_window_of_a_level_19_stream_is_accepted():
    stream = zstandard.ZstdCompressor(level=19).compressobj()
    data = stream.compress(b"abc" * 1000) + stream.flush()
    assert zstandard.get_frame_parameters(data).window_size == inflate.MAX_WINDOW_BYTES
    assert inflated(data)[0] == b"abc" * 1000


ZSTD_SAMPLES = [
    zstandard.ZstdCompressor().compress(bytes(range(200)) * 30),
    zstd_zeros(3 * BLOCK),
    zstd_zeros(3 * BLOCK, 3 * BLOCK),
    skippable(2, b"hi") + zstd_zeros(BLOCK + 1),
]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda sample, at, new: sample[:at] + new + sample[at + len(new):],
              st.sampled_from(ZSTD_SAMPLES), st.integers(0, 60), st.binary(min_size=1, max_size=9)),
    st.builds(lambda sample, at: sample[:at], st.sampled_from(ZSTD_SAMPLES), st.integers(0, 99)),
), left=st.sampled_from([0, 100, 4 * BLOCK]))  # fmt: skip
@example(data=zstd_zeros(BLOCK, 2**64 - 1, blocks=1), left=100)  # declares "unknown"
def test_zstd_answers_arbitrary_bytes_within_the_budget_or_refuses(data, left):
    budget = Budget(left, left)
    try:
        out = inflate.zstd(data, budget, "x")
    except InvalidArgument as e:
        assert e.field == "x"
        return
    assert len(out) <= left and budget.left == left - len(out)


# -- the budget in decode_request ----------------------------------------------------------


def compressed_sequence(raw, data: bytes | None = None) -> xpb.UserActionSequence:
    seq = xai_forms.sequence(raw, "compressedUserActions")
    if data is not None:
        seq.userActionsData.compressedUserActions.data = data
    return seq


def raw_for(seed: int, history: int = 9, candidates: int = 3):
    raw = random_request(np.random.default_rng(seed), history, candidates, f"r{seed}")
    return xai_forms.expressible(raw, one_action=False)


def test_every_inflation_of_a_call_draws_from_one_budget(parity_config):
    """Two sequences each inflating to 0.6 x the limit: either alone decodes, both do not."""
    limits = Limits()
    padding = int(0.6 * limits.max_request_bytes)
    raws = [raw_for(1), raw_for(2)]
    request = xai_forms.request(raws, "orderedAggregatedUserActionsList")
    for k, raw in enumerate(raws):
        inner = xai_forms.sequence(raw, "orderedAggregatedUserActionsList").SerializeToString()
        inner += varint(99 << 3 | 2) + varint(padding) + bytes(padding)  # an unknown field
        request.sequences[k].CopyFrom(compressed_sequence(raw, hostile.zstd_compress(inner)))
    alone = xpb.PredictNextActionsRequest()
    alone.CopyFrom(request)
    del alone.sequences[1], alone.candidateSets[1]
    xai.decode_request(alone.SerializeToString(), parity_config, limits)
    with pytest.raises(InvalidArgument) as error:
        xai.decode_request(request.SerializeToString(), parity_config, limits)
    assert error.value.field == "sequences[1].userActionsData.compressedUserActions.data"


def test_the_requests_own_bytes_count_first(parity_config):
    raw = raw_for(3)
    request = xai_forms.request([raw], "compressedUserActions")
    inner = xai_forms.sequence(raw, "orderedAggregatedUserActionsList").SerializeToString()
    data = request.SerializeToString()
    fits = Limits(max_request_bytes=len(data) + len(inner))
    xai.decode_request(data, parity_config, fits)
    short = dataclasses.replace(fits, max_request_bytes=fits.max_request_bytes - 1)
    with pytest.raises(
        InvalidArgument, match=f"^{re.escape(FIELD)}: inflates to {len(inner)} bytes"
    ):
        xai.decode_request(data, parity_config, short)


def test_a_history_shared_by_every_set_is_inflated_and_decoded_once(parity_config, monkeypatch):
    raw = raw_for(4, history=40, candidates=1)
    request = xai_forms.request([raw], "compressedUserActions")
    for _ in range(63):
        request.candidateSets.append(request.candidateSets[0])
    calls = []
    monkeypatch.setattr(inflate, "zstd", lambda *a, real=inflate.zstd: calls.append(1) or real(*a))
    _, raws, _ = xai.decode_request(request.SerializeToString(), parity_config, Limits())
    assert len(raws) == 64 and len(calls) == 1
    assert all(r.history_post_ids is raws[0].history_post_ids for r in raws)


# -- amplification, measured ---------------------------------------------------------------


@dataclasses.dataclass
class Cost:
    peak: int  # bytes: the most of tracemalloc's peak, the resident set's and pyarrow's growth
    seconds: float  # CPU seconds of the process (pyarrow's threads included)


def _resident() -> tuple[int, int]:
    """(resident bytes now, their peak) from /proc/self/status; (0, 0) where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def _reset_resident_peak() -> bool:
    """Make the resident peak the resident now (Linux); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measured():
    """The peak memory and CPU time of the block. tracemalloc sees Python objects and numpy;
    C allocations it cannot see (zstd's, protobuf's arena, pyarrow's pool) show in the
    resident set's peak, reset before the block (/proc/self/clear_refs; Linux), and pyarrow's
    in its pool's peak where the block raises it."""
    import pyarrow as pa

    gc.collect()
    resets = _reset_resident_peak()
    resident, _ = _resident()
    pool = pa.default_memory_pool()
    arrow = (pool.max_memory() or 0, pool.bytes_allocated())
    cost = Cost(0, 0.0)
    tracemalloc.start()
    start = time.process_time()
    try:
        yield cost
    finally:
        cost.seconds = time.process_time() - start
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        arrow_peak = (
            (pool.max_memory() or 0) - arrow[1] if (pool.max_memory() or 0) > arrow[0] else 0
        )
        grown = _resident()[1] - resident if resets else 0
        cost.peak = max(traced, grown, arrow_peak)


def memory_bound(size: int) -> int:
    """The most decoding `size` request bytes may take: 32 bytes a byte, for protobuf's parse
    (its arena holds ~40 bytes per message: 1 MiB of empty 2-byte candidate sets takes 17-24
    MiB before any check can run; hostile case protobuf_empty_candidate_sets), and 8 MiB for
    what the budget lets a request inflate to (max_request_bytes, 1 MiB) and its decoded form
    (a few bytes a byte), numpy's arrays and the allocators' granularity."""
    return 32 * size + 8 * MiB


SECONDS = 1.0  # CPU seconds any one decode may take (the largest ordinary form takes ~0.1 s)


def _arrow_compressed(raw, codec: str) -> bytes:
    import pyarrow as pa
    import pyarrow.ipc

    table = pa.ipc.open_stream(xai_forms.arrow_history(raw)).read_all()
    return hostile.arrow_stream(table, codec)


def forms(limits: Limits) -> dict[str, bytes]:
    """One maximal request (max_history_events of history, 32 candidates) of each form."""
    n = limits.max_history_events
    one, many = raw_for(5, n, 32), raw_for(6, n, 32)
    one = xai_forms.expressible(one, one_action=True)
    out = {f: xai_forms.request([one if f in xai_forms.ONE_ACTION_FORMS else many], f)
           for f in xai_forms.FORMS}  # fmt: skip
    stream = zstandard.ZstdCompressor().compressobj()
    inner = xai_forms.sequence(many, "orderedAggregatedUserActionsList").SerializeToString()
    undeclared = xpb.PredictNextActionsRequest()
    undeclared.CopyFrom(out["compressedUserActions"])
    undeclared.sequences[0].userActionsData.compressedUserActions.data = (
        stream.compress(inner) + stream.flush()
    )
    out["compressedUserActions, no declared size"] = undeclared
    for codec in ("zstd", "lz4"):
        request = xpb.PredictNextActionsRequest()
        request.CopyFrom(out["columnar_sequences"])
        request.columnar_sequences[0] = _arrow_compressed(many, codec)
        out[f"columnar_sequences, {codec}"] = request
    for form in ("compressedUserActions", "orderedAggregatedUserActionsList"):
        shared = xai_forms.request([raw_for(7, n, 1)], form)
        for _ in range(limits.max_candidate_sets - 1):
            shared.candidateSets.append(shared.candidateSets[0])
        out[f"{form}, shared by {limits.max_candidate_sets} sets"] = shared
    out["2,800 candidates"] = xai_forms.request(
        [raw_for(8, 64, limits.max_candidates_per_request)], "orderedAggregatedUserActionsList"
    )
    return {name: r.SerializeToString() for name, r in out.items()}


FORM_REQUESTS = forms(Limits())


@pytest.mark.parametrize("name", FORM_REQUESTS)
def test_decoding_any_form_takes_memory_and_time_bounded_by_the_bytes_received(parity_config, name):
    data, limits = FORM_REQUESTS[name], Limits()
    assert len(data) <= limits.max_request_bytes
    xai.decode_request(data, parity_config, limits)  # first-use imports and pools
    with measured() as cost:
        xai.decode_request(data, parity_config, limits)
    assert cost.peak <= memory_bound(len(data)), (cost, len(data))
    assert cost.seconds <= SECONDS, cost


HOSTILE = {case.name: case for case in hostile.cases()}


@pytest.mark.parametrize("name", HOSTILE)
def test_every_hostile_case_is_refused_within_time_and_memory_bounds(parity_config, name):
    case = HOSTILE[name]
    decode = xai.decode_request if case.method == hostile.PREDICT else convert.decode_rank_request
    refused = "OK" not in case.codes
    with measured() as cost:
        try:
            decode(case.data, parity_config, Limits())
            error = None
        except InvalidArgument as e:
            error = e
    assert (error is not None) == refused, error
    assert cost.peak <= memory_bound(len(case.data)), (cost, len(case.data))
    assert cost.seconds <= SECONDS, cost


def test_the_zstd_bombs_cost_their_declared_size_without_the_budget(parity_config):
    """The measurement can fail: the 2 GiB bomb inflated the way decoding did before the
    budget (zstandard allocates a frame's declared size whatever max_output_size says) costs
    2 GiB and seconds, far past the bounds."""
    frame = zstd_zeros(64 * MiB, 64 * MiB)  # 1/32 of the 2 GiB case: enough to show
    with measured() as cost:
        out = zstandard.ZstdDecompressor().decompress(frame, max_output_size=8 * MiB)
    assert len(out) == 64 * MiB
    data = hostile.compressed_request(frame)
    assert cost.peak > memory_bound(len(data)), cost
    del out


def test_decode_cost_scans_a_hostile_case_quickly():
    for case in HOSTILE.values():
        if case.method != hostile.PREDICT:
            continue
        start = time.process_time()
        cost = xai.decode_cost(case.data, Limits())
        assert time.process_time() - start < 0.05 and cost >= len(case.data), case.name


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(case=st.sampled_from(sorted(HOSTILE)), at=st.integers(0, 1 << 20),
       new=st.binary(min_size=1, max_size=8))  # fmt: skip
def test_hostile_cases_mutated_are_answered_or_refused(parity_config, case, at, new):
    case = HOSTILE[case]
    if case.method != hostile.PREDICT or len(case.data) > Limits().max_request_bytes:
        return
    at %= len(case.data) + 1
    data = case.data[:at] + new + case.data[at + len(new) :]
    try:
        xai.decode_request(data, parity_config, Limits())
    except InvalidArgument:
        pass


def test_zstd_bomb_helper_writes_what_it_declares():
    frame = zstd_zeros(3 * BLOCK + 7, 3 * BLOCK + 7)
    assert zstandard.frame_content_size(frame) == 3 * BLOCK + 7
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(3 * BLOCK + 7)
    assert struct.unpack_from("<I", skippable(5))[0] == 0x184D2A50
