"""Proto <-> domain conversion at the edge of the service, with input validation.

Validation errors are `InvalidArgument` naming the field, using the proto's field paths
(`candidates[3].product_surface`, `history[0].actions[1]`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.actions import ACTIONS, NUM_ACTIONS
from model.config import PhoenixModelConfig
from model.features import RawRequest, RequestError
from server.errors import InvalidArgument
from server.rpc import ranking_pb2 as pb

MAX_REQUEST_ID_BYTES = 128


@dataclass(frozen=True)
class Limits:
    max_candidates_per_request: int = 2800
    max_history_events: int = 4096
    max_request_bytes: int = 4 * 2**20


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
    actions = np.zeros((n, NUM_ACTIONS), np.uint8)
    for i, event in enumerate(request.history):
        for j, value in enumerate(event.actions):
            if not 1 <= value <= NUM_ACTIONS:
                what = (
                    "ACTION_UNSPECIFIED is not an action"
                    if value == 0
                    else (f"{value} is not a defined Action (1..{NUM_ACTIONS})")
                )
                raise InvalidArgument(f"history[{i}].actions[{j}]", what)
            actions[i, value - 1] = 1

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


def raw_request_to_pb(raw: RawRequest) -> pb.RankRequest:
    """The inverse of `raw_request_from_pb` (clients, tests)."""
    return pb.RankRequest(
        user_id=int(raw.user_id),
        history=[
            pb.HistoryEvent(
                post_id=int(p),
                author_id=int(a),
                actions=[int(j) + 1 for j in np.flatnonzero(acts)],
                product_surface=int(s),
            )
            for p, a, acts, s in zip(
                raw.history_post_ids,
                raw.history_author_ids,
                raw.history_actions,
                raw.history_surface,
                strict=True,
            )
        ],
        candidates=[
            pb.Candidate(post_id=int(p), author_id=int(a), product_surface=int(s))
            for p, a, s in zip(
                raw.candidate_post_ids, raw.candidate_author_ids, raw.candidate_surface, strict=True
            )
        ],
        request_id=raw.request_id,
    )


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 sigmoid without overflow, and relatively exact for very negative logits."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def rank_response(
    post_ids: np.ndarray, logits: np.ndarray, model_version: str, request_id: str
) -> pb.RankResponse:
    """Scores in request order: post ids uint64 [m], logits float32 [m, A]."""
    response = pb.RankResponse(model_version=model_version, request_id=request_id)
    probabilities = sigmoid(logits).tolist()
    add = response.scores.add
    for post_id, lg, pr in zip(post_ids.tolist(), logits.tolist(), probabilities, strict=True):
        add(post_id=post_id, logits=lg, probabilities=pr)
    return response


def logits_from_pb(response: pb.RankResponse) -> np.ndarray:
    """float32 [m, A] logits of a RankResponse."""
    return np.array([s.logits for s in response.scores], np.float32).reshape(-1, len(ACTIONS))
