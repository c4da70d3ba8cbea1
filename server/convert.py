"""Proto <-> domain conversion at the edge of the service, with input validation.

Validation errors are `InvalidArgument` naming the field, using the proto's field paths
(`candidates[3].product_surface`, `history[0].actions[1]`).
"""

from __future__ import annotations

import itertools

import numpy as np

from model.actions import NUM_ACTIONS
from model.config import PhoenixModelConfig
from request.raw import RawRequest, RequestError
from request.schema import MAX_REQUEST_ID_BYTES
from server.config import Limits
from server.errors import InvalidArgument
from server.rpc import ranking_pb2 as pb


def raw_request_from_pb(
    request: pb.RankRequest, config: PhoenixModelConfig, limits: Limits
) -> RawRequest:
    """Validate a RankRequest and turn it into numpy columns; InvalidArgument on bad input."""
    size = request.ByteSize()
    if size > limits.max_request_bytes:
        raise InvalidArgument(
            "request", f"{size} bytes exceeds the server's limit of {limits.max_request_bytes}"
        )
    if len(request.request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument("request_id", f"longer than {MAX_REQUEST_ID_BYTES} bytes")
    m, n = len(request.candidates), len(request.history)
    if m > limits.max_candidates_per_request:
        raise InvalidArgument(
            "candidates",
            f"{m} candidates exceed max_candidates_per_request={limits.max_candidates_per_request}",
        )
    if n > limits.max_history_events:
        raise InvalidArgument(
            "history", f"{n} events exceed max_history_events={limits.max_history_events}"
        )

    cand = np.array(
        [(c.post_id, c.author_id, c.product_surface) for c in request.candidates], dtype=np.uint64
    ).reshape(m, 3)
    hist = np.array(
        [(e.post_id, e.author_id, e.product_surface) for e in request.history], dtype=np.uint64
    ).reshape(n, 3)
    actions = _multi_hot_actions(request.history)
    raw = RawRequest(
        user_id=request.user_id,
        history_post_ids=hist[:, 0],
        history_author_ids=hist[:, 1],
        history_actions=actions,
        history_surface=hist[:, 2].astype(np.int64),
        candidate_post_ids=cand[:, 0],
        candidate_author_ids=cand[:, 1],
        candidate_surface=cand[:, 2].astype(np.int64),
        request_id=request.request_id,
    )
    try:
        raw.validate(config)
    except RequestError as e:
        raise InvalidArgument(e.field, e.message) from None
    return raw


def _multi_hot_actions(history) -> np.ndarray:
    """uint8 [n, A] multi-hot of every event's actions; InvalidArgument on a bad value."""
    n = len(history)
    counts = np.fromiter((len(e.actions) for e in history), np.int64, n)
    values = np.fromiter(
        itertools.chain.from_iterable(e.actions for e in history), np.int64, int(counts.sum())
    )
    bad = np.flatnonzero((values < 1) | (values > NUM_ACTIONS))
    if bad.size:
        ends = np.cumsum(counts)
        i = int(np.searchsorted(ends, bad[0], side="right"))
        j = int(bad[0] - (ends[i] - counts[i]))
        value = int(values[bad[0]])
        what = (
            "ACTION_UNSPECIFIED is not an action"
            if value == 0
            else f"{value} is not a defined Action (1..{NUM_ACTIONS})"
        )
        raise InvalidArgument(f"history[{i}].actions[{j}]", what)
    actions = np.zeros((n, NUM_ACTIONS), np.uint8)
    actions[np.repeat(np.arange(n), counts), values - 1] = 1
    return actions


def raw_request_to_pb(raw: RawRequest) -> pb.RankRequest:
    """The inverse of `raw_request_from_pb` (clients, tests)."""
    return pb.RankRequest(
        user_id=int(raw.user_id),
        history=[
            pb.HistoryEvent(
                post_id=p, author_id=a, actions=[j + 1 for j in acts], product_surface=s
            )
            for p, a, acts, s in raw.history_rows()
        ],
        candidates=[
            pb.Candidate(post_id=p, author_id=a, product_surface=s)
            for p, a, s in raw.candidate_rows()
        ],
        request_id=raw.request_id,
    )


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 sigmoid without overflow, and relatively exact for very negative logits."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    negative = (x < 0).astype(np.float32)
    # 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, without np.where (8x slower here).
    return (e * negative + (1 - negative)) / (1 + e)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data if data else b""


def rank_response_bytes(
    post_ids: np.ndarray, logits: np.ndarray, model_version: str, request_id: str
) -> bytes:
    """A serialized RankResponse, built with numpy instead of one message per candidate.

    Every CandidateScores has the same size (post_id fixed64, then `logits` and
    `probabilities` as packed floats), so the m entries are one [m, record] byte array: ~100x
    faster than filling 2,800 messages. Parses to exactly the message the protobuf runtime
    would build (tests/server/test_convert.py).
    """
    m, a = logits.shape
    floats = _varint(2 << 3 | 2) + _varint(4 * a)  # header of packed field 2 (logits)
    inner = 9 + 2 * (len(floats) + 4 * a)  # post_id + logits + probabilities
    prefix = _varint(1 << 3 | 2) + _varint(inner)  # RankResponse.scores entry header
    head = prefix + b"\x09"  # ... then CandidateScores.post_id's tag
    record = np.empty((m, len(head) + inner - 1), np.uint8)
    c = 0
    for part, width in (
        (np.frombuffer(head, np.uint8), len(head)),
        (post_ids.astype("<u8").view(np.uint8).reshape(m, 8), 8),
        (np.frombuffer(floats, np.uint8), len(floats)),
        (logits.astype("<f4").view(np.uint8).reshape(m, 4 * a), 4 * a),
        (np.frombuffer(_varint(3 << 3 | 2) + _varint(4 * a), np.uint8), len(floats)),
        (sigmoid(logits).astype("<f4").view(np.uint8).reshape(m, 4 * a), 4 * a),
    ):
        record[:, c : c + width] = part
        c += width
    return record.tobytes() + _string_field(2, model_version) + _string_field(3, request_id)


def logits_from_pb(response: pb.RankResponse, num_actions: int = NUM_ACTIONS) -> np.ndarray:
    """float32 [m, A] logits of a RankResponse."""
    return _per_action(response, "logits", num_actions)


def probabilities_from_pb(response: pb.RankResponse, num_actions: int = NUM_ACTIONS) -> np.ndarray:
    """float32 [m, A] probabilities of a RankResponse (as the server computed them)."""
    return _per_action(response, "probabilities", num_actions)


def _per_action(response: pb.RankResponse, field: str, num_actions: int) -> np.ndarray:
    values = [getattr(s, field) for s in response.scores]
    return np.array(values, np.float32).reshape(-1, num_actions)
