"""Frames between frontend workers and the device process (one Unix socket per frontend).

A frame is `u32 length | u8 kind | payload` (little-endian; length counts kind + payload).
Arrays travel as raw bytes in a fixed order, so decoding is `np.frombuffer` per array (no
pickle, no per-element work):

    SUBMIT  frontend -> device  call id, absolute deadline (CLOCK_MONOTONIC seconds, shared by
                                the processes of one machine; NaN = none), the frontend's calls
                                in flight, n, m, then the EncodedRequest's arrays in the
                                order and dtypes of `request.columns` (its `Layout`)
    RESULT  device -> frontend  call id, status code, the queue's `Door` (retry hint in ms,
                                whether full), then (OK) the UTF-8 model version that scored
                                it and float32 [m, W] scores, or a UTF-8 message
    INFO    device -> frontend  a serialized ModelInfo (after a new version is swapped in)
    DONE    frontend -> device  one finished call for the metrics (`server.operations.metrics.CallRecord`)
                                and the frontend's calls in flight
    CANCEL  frontend -> device  call id: its call ended; drop the request if it has not run
    RELOAD  frontend -> device  a ReloadModel call: call id, whether to check now
    RELOADED device -> frontend call id, status code, then (OK) in progress, the serving
                                checkpoint's timestamp and its version, or a UTF-8 message
    STATE   device -> frontend  the device process's lifecycle: its `Phase` and, while it
                                is held, why no version may serve ("" when one may)
    READY   frontend -> device  the frontend's gRPC port is bound
    TRANSPORT frontend -> device  what the frontend's gRPC transport counted (calls started,
                                succeeded, failed, open: `server.operations.transport_stats`) and the
                                calls it refused before the queue, by reason (a full queue,
                                no place left: since it started),
                                every `TRANSPORT_REPORT_SECONDS` and once more when it stops

Shapes: n history events, m candidates, U / I / Au hashes per user / post / author id,
A actions, W scores per candidate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import struct

import grpc
import numpy as np

from request.columns import EncodedRequest, Layout
from server.door.call_limits import DOOR_REASONS
from server.operations.checkpoint_dir import ReloadState
from server.operations.lifecycle import Phase
from server.operations.metrics import METHODS, CallRecord
from server.operations.transport_stats import TransportCounts
from server.scheduling.batch_result import Scored

SUBMIT, RESULT, DONE, STATE, READY, INFO, TRANSPORT, RELOAD, RELOADED, CANCEL = range(1, 11)

_FRAME = struct.Struct("<IB")
_SUBMIT = struct.Struct("<QdIII")  # call id, deadline, in flight, n, m
# call id, status code, the queue's retry hint ms, its fullness (`Door`), version bytes
_RESULT = struct.Struct("<QBIdH")
# method, status code, seconds, candidates, in flight, scoring, network delay (NaN: none); then
# the client's name (UTF-8)
_DONE = struct.Struct("<BBdIIBd")
_RELOAD = struct.Struct("<QB")  # call id, check now
_CANCEL = struct.Struct("<Q")  # call id
_RELOADED = struct.Struct("<QBBd")  # call id, status code, in progress, checkpoint timestamp
_STATE = struct.Struct("<B")
_READY = struct.Struct("<I")  # worker index
_TRANSPORT = struct.Struct("<QQQQH")  # calls started, succeeded, failed, open; refusal counts
_REFUSALS = struct.Struct("<BBQ")  # a method (METHODS, or 255: another), a reason, count
_OTHER = 255
TRANSPORT_REPORT_SECONDS = 1.0
MAX_FRAME_BYTES = 64 * 2**20
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def frame(kind: int, *parts: bytes) -> bytes:
    """One frame of `kind` whose payload is the concatenation of `parts`."""
    length = 1 + sum(len(p) for p in parts)
    return b"".join((_FRAME.pack(length, kind), *parts))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, memoryview]:
    """The next (kind, payload); IncompleteReadError at end of stream."""
    length, kind = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if not 1 <= length <= MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes")
    return kind, memoryview(await reader.readexactly(length - 1))


def submit_frame(
    call_id: int, deadline: float | None, in_flight: int, encoded: EncodedRequest, layout: Layout
) -> bytes:
    """A request's arrays in `layout`'s order (`request.columns`), each as its raw bytes."""
    n, m = encoded.num_history, encoded.num_candidates
    header = _SUBMIT.pack(call_id, math.nan if deadline is None else deadline, in_flight, n, m)
    arrays = [
        np.ascontiguousarray(getattr(encoded, name), dtype).tobytes()
        for name, dtype, _ in layout.shapes(n, m)
    ]
    return frame(SUBMIT, header, *arrays)


def parse_submit(
    payload: memoryview, layout: Layout
) -> tuple[int, float | None, int, EncodedRequest]:
    """(call id, deadline, frontend's calls in flight, request); ValueError if malformed."""
    call_id, deadline, in_flight, n, m = _SUBMIT.unpack_from(payload)
    offset, arrays = _SUBMIT.size, {}
    for name, dtype, shape in layout.shapes(n, m):
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(payload, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    if offset != len(payload):
        raise ValueError(f"SUBMIT frame has {len(payload) - offset} stray bytes")
    return call_id, None if math.isnan(deadline) else deadline, in_flight, layout.request(arrays)


@dataclasses.dataclass(frozen=True)
class Door:
    """The device queue's state as a frontend's door sees it, sent with every answer: for which
    calls it is full (`server.scheduling.admission.fullness_s`), and its retry hint (ms)."""

    fullness_s: float = 0.0  # calls with less time to their deadline would be refused
    retry_ms: int = 0


def result_frame(call_id: int, code: int, door: Door, scored: Scored | None = None,
                 message: str = "") -> bytes:  # fmt: skip
    head = (call_id, code, door.retry_ms, door.fullness_s)
    if scored is None:
        return frame(RESULT, _RESULT.pack(*head, 0), message.encode())
    version = scored.model_version.encode()
    body = scored.scores.astype("<f4", copy=False).tobytes()
    return frame(RESULT, _RESULT.pack(*head, len(version)), version, body)


def parse_result(payload: memoryview, width: int) -> tuple[int, int, Door, Scored | str]:
    """(call id, status code, the queue's Door, Scored (float32 [m, W]) if OK else the
    message)."""
    call_id, code, retry_ms, fullness, version_bytes = _RESULT.unpack_from(payload)
    door = Door(fullness, retry_ms)
    body = payload[_RESULT.size :]
    if code == 0:
        version = bytes(body[:version_bytes]).decode()
        scores = np.frombuffer(body[version_bytes:], "<f4").reshape(-1, width)
        return call_id, code, door, Scored(scores, version)
    return call_id, code, door, bytes(body).decode(errors="replace")


def info_frame(info: bytes) -> bytes:
    """A new ModelInfo (serialized), for the frontends' GetModelInfo."""
    return frame(INFO, info)


def done_frame(record: CallRecord, in_flight: int) -> bytes:
    r = record
    delay = math.nan if r.network_delay_s is None else r.network_delay_s
    head = _DONE.pack(METHODS.index(r.method), r.code.value[0], r.seconds, r.candidates, in_flight,
                      r.scoring, delay)  # fmt: skip
    return frame(DONE, head, r.client.encode())


def parse_done(payload: memoryview) -> tuple[CallRecord, int]:
    """(the call's record, the frontend's calls in flight)."""
    method, code, seconds, candidates, in_flight, scoring, delay = _DONE.unpack_from(payload)
    client = bytes(payload[_DONE.size :]).decode(errors="replace")
    record = CallRecord(METHODS[method], _CODES[code], seconds, candidates, bool(scoring), client,
                        None if math.isnan(delay) else delay)  # fmt: skip
    return record, in_flight


def cancel_frame(call_id: int) -> bytes:
    return frame(CANCEL, _CANCEL.pack(call_id))


def parse_cancel(payload: memoryview) -> int:
    return _CANCEL.unpack_from(payload)[0]


def reload_frame(call_id: int, check_now: bool) -> bytes:
    return frame(RELOAD, _RELOAD.pack(call_id, check_now))


def parse_reload(payload: memoryview) -> tuple[int, bool]:
    call_id, check_now = _RELOAD.unpack_from(payload)
    return call_id, bool(check_now)


def reloaded_frame(call_id: int, code: int, state: ReloadState | None = None,
                   message: str = "") -> bytes:  # fmt: skip
    if state is None:
        return frame(RELOADED, _RELOADED.pack(call_id, code, 0, 0.0), message.encode())
    head = _RELOADED.pack(call_id, code, state.in_progress, state.checkpoint_timestamp)
    return frame(RELOADED, head, state.serving_version.encode())


def parse_reloaded(payload: memoryview) -> tuple[int, int, ReloadState | str]:
    """(call id, status code, the state if OK else the message)."""
    call_id, code, in_progress, timestamp = _RELOADED.unpack_from(payload)
    text = bytes(payload[_RELOADED.size :]).decode(errors="replace")
    if code:
        return call_id, code, text
    return call_id, code, ReloadState(bool(in_progress), timestamp, text)


def state_frame(phase: Phase, held: str | None) -> bytes:
    """`held`: why no version may serve (None: one may)."""
    return frame(STATE, _STATE.pack(phase), (held or "").encode())


def parse_state(payload: memoryview) -> tuple[Phase, str | None]:
    """(phase, why no version may serve or None)."""
    held = bytes(payload[_STATE.size :]).decode(errors="replace")
    return Phase(_STATE.unpack_from(payload)[0]), held or None


def ready_frame(index: int) -> bytes:
    return frame(READY, _READY.pack(index))


Refusals = dict[tuple[str | None, str], int]  # (method or None: another, reason) -> count


def transport_frame(counts: TransportCounts, refusals: Refusals) -> bytes:
    """`refusals`: the calls refused before the queue so far, by method (`METHODS`; None for
    another) and reason (`DOOR_REASONS`)."""
    c = counts
    entries = [_REFUSALS.pack(_OTHER if m is None else METHODS.index(m), DOOR_REASONS.index(r), n)
               for (m, r), n in refusals.items()]  # fmt: skip
    return frame(TRANSPORT, _TRANSPORT.pack(c.started, c.succeeded, c.failed, c.open,
                                            len(entries)), *entries)  # fmt: skip


def parse_transport(payload: memoryview) -> tuple[TransportCounts, Refusals]:
    """(the transport's counts, the refusals before the queue so far)."""
    *counts, n = _TRANSPORT.unpack_from(payload)
    refusals = {}
    for i in range(n):
        m, r, count = _REFUSALS.unpack_from(payload, _TRANSPORT.size + i * _REFUSALS.size)
        refusals[(None if m == _OTHER else METHODS[m], DOOR_REASONS[r])] = count
    return TransportCounts(*counts), refusals
