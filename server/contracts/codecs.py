"""The scoring RPCs' wire formats: request bytes -> `Decoded`, scores -> response bytes.

Every scoring RPC takes the same path through `server.door.service` (admit, queue, wait); what
differs is only its codec:

  RankCodec     phoenix.ranking.v1.RankingService/Rank: one ranking request
  PredictCodec  xai.recsys.v1.RecsysPredictor/PredictNextActions: one ranking request per
                candidate set (`server.contracts.xai`)

A codec's `decode` validates and hashes (InvalidArgument naming the field otherwise); its
`encode` writes the response bytes directly (numpy, no message objects per candidate); its
`cost` says, from the bytes' size and wire format alone, how much work decoding them may take
(bytes of work: what decides where the service decodes them). Each runs on the event loop for
cheap calls and on a host thread for costly ones: they must be thread-safe and hold no state
per call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from request.actions import NUM_ACTIONS
from request.encoding import EncodedRequest, encode
from request.raw import RawRequest
from server.contracts import convert, xai
from server.scheduling.batch_result import Scored


@dataclasses.dataclass(frozen=True, eq=False)
class Decoded:
    """A scoring call's request, decoded, validated and hashed: what the queue scores (one
    entry per ranking request) and what its response is built from."""

    request_id: str  # the caller's, or "" (the service then assigns one)
    raws: tuple[RawRequest, ...]  # each ranking request in raw ids
    encoded: tuple[EncodedRequest, ...]  # the same, hashed: what the queue scores
    plan: Any = None  # whatever else the codec's encode needs

    @property
    def candidates(self) -> int:
        return sum(r.num_candidates for r in self.raws)


# Decoding a byte of a PredictNextActionsRequest (nested messages, one object per event and
# candidate) costs about ten times a byte of a RankRequest (packed columns): ~30 against ~3 ns.
PREDICT_BYTE_COST = 10


class Cost(NamedTuple):
    """What decoding a request may take, from its size and wire format alone."""

    work: int  # bytes of work at a RankRequest byte's cost (~3 ns each)
    inflates: bool  # it holds compressed or Arrow-encoded parts: up to the request limit's
    # worth of bytes more, whatever its own size


class Codec(Protocol):
    method: str  # the RPC's name: the `method` label of the metrics

    def decode(self, data: bytes, model, limits) -> Decoded:
        """`model`: `server.door.service.ModelFacts`; `limits`: `server.config.Limits`."""
        ...

    def cost(self, data: bytes, limits) -> Cost:
        """What decoding `data` may take, at most (cheap: no parse)."""
        ...

    def encode(self, decoded: Decoded, scored: Sequence[Scored], request_id: str) -> bytes: ...


def _hashed(raws: Sequence[RawRequest], model) -> tuple[EncodedRequest, ...]:
    return tuple(encode(raw, model.config, model.rows) for raw in raws)


class RankCodec:
    """One request; its scores in request order (`convert.rank_response_bytes`)."""

    method = "Rank"

    def decode(self, data: bytes, model, limits) -> Decoded:
        raw = convert.decode_rank_request(data, model.config, limits)
        return Decoded(raw.request_id, (raw,), _hashed((raw,), model))

    def cost(self, data: bytes, limits) -> Cost:
        return Cost(len(data), False)  # nothing in a RankRequest inflates: work follows size

    def encode(self, decoded: Decoded, scored: Sequence[Scored], request_id: str) -> bytes:
        (raw,), (result,) = decoded.raws, scored
        a = NUM_ACTIONS
        return convert.rank_response_bytes(
            raw.candidate_post_ids, result.scores[:, :a], result.model_version, request_id,
            result.scores[:, a:],
        )  # fmt: skip


class PredictCodec:
    """xAI's contract: one request per candidate set (`server.contracts.xai`). `pod` and `node` are the
    answering pod's and node's names (POD_NAME, NODE_NAME), None when not set."""

    method = "PredictNextActions"

    def __init__(self, pod: str | None = None, node: str | None = None):
        self.pod, self.node = pod, node

    @classmethod
    def from_environment(cls) -> PredictCodec:
        return cls(os.environ.get("POD_NAME") or None, os.environ.get("NODE_NAME") or None)

    def decode(self, data: bytes, model, limits) -> Decoded:
        request_id, raws, plan = xai.decode_request(data, model.config, limits)
        return Decoded(request_id, tuple(raws), _hashed(raws, model), plan)

    def cost(self, data: bytes, limits) -> Cost:
        cost = xai.decode_cost(data, limits)  # its length, inflation, candidate sets
        inflates = cost >= len(data) + limits.max_request_bytes
        return Cost(cost + (PREDICT_BYTE_COST - 1) * len(data), inflates)

    def encode(self, decoded: Decoded, scored: Sequence[Scored], request_id: str) -> bytes:
        return xai.encode_response(decoded.plan, [s.scores for s in scored],
                                   [s.model_version for s in scored], self.pod, self.node)  # fmt: skip
