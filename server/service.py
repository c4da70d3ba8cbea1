"""The gRPC layer: wire formats <-> domain types, validation and status codes, nothing else.

A scoring call arrives as raw bytes (no deserializer), so that everything about it, including
bytes that do not parse, is answered and counted here. Each scoring RPC is a `Codec` (its
request bytes -> `Decoded`, its scores -> response bytes); every one takes the same path,
`RankingService._score`:

1. Refuse before spending anything (`server.lifecycle`, then the queue): starting, warming up
   or shutting down (UNAVAILABLE), a deadline that has passed, or a queue already holding
   more work than it may (`Batcher.precheck`).
2. Decode, validate and hash (host work). Requests up to `INLINE_BYTES` are handled on the
   event loop, where a thread hop would cost more than the work; larger ones on the host
   thread, so that one large request holds the loop for no longer than Python's switch
   interval at a time, not for the milliseconds its decoding takes.
3. Hand each encoded ranking request to the queue, which admits it by work and deadline or
   refuses it (RESOURCE_EXHAUSTED with a computed retry hint, or DEADLINE_EXCEEDED), and
   await them all.
4. Serialize the response with numpy (`convert.rank_response_bytes`), off the loop beyond
   `INLINE_CANDIDATES`.

Errors map to status codes through `server.errors`; anything unexpected becomes INTERNAL
carrying the request id and is logged. Every call is counted in `phoenix_requests_total` with
its final code, including refusals, undecodable bytes and client cancellations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

import grpc

from model.actions import NUM_ACTIONS
from model.config import PhoenixModelConfig, TableRows
from request.encoding import EncodedRequest, encode
from request.raw import RawRequest
from server import convert
from server.batcher import Scored
from server.config import Limits
from server.errors import InvalidArgument, QueueFull, ServiceError
from server.lifecycle import Lifecycle
from server.logs import RateLimited
from server.metrics import Metrics
from server.rpc import ranking_pb2 as pb

log = logging.getLogger("phoenix.requests")
# Bad requests are the caller's doing and can come by the thousand: one line a second at most.
_invalid_requests = RateLimited(log)

try:  # what abort raises when the call is already over (gRPC's Cython layer)
    from grpc._cython.cygrpc import ExecuteBatchError as _CALL_GONE
except ImportError:  # pragma: no cover - another grpcio layout: let the error surface
    _CALL_GONE = ()

# Requests up to this many bytes are decoded on the event loop: ~50 us of work, less than a
# hop to the host thread and back. A 32-candidate request in the row form is ~2.4 KB, a
# 2,800-candidate one in the columnar form ~56 KB.
INLINE_BYTES = 16 * 1024
# Responses for up to this many candidates are serialized on the event loop (~90 us at 512).
INLINE_CANDIDATES = 512


class Queue(Protocol):
    """Where the service hands encoded requests: the Batcher, or (in a frontend worker) the
    link to the process that owns the device. Both refuse by raising a ServiceError."""

    def precheck(self, deadline: float | None) -> None: ...

    def submit(self, encoded: EncodedRequest, deadline: float | None) -> asyncio.Future:
        """Scores float32 [m, 2A] (logits, then probabilities) and the version that
        computed them."""
        ...


class Recorder(Protocol):
    """Where the service reports each call (Prometheus here, or the device process)."""

    def started(self) -> None:
        """A scoring call (one of `SCORING_METHODS`) began; its `finished` follows."""

    def finished(
        self, method: str, code: grpc.StatusCode, seconds: float, candidates: int
    ) -> None: ...


class MetricsRecorder:
    """Counts calls in this process's metrics. `in_flight=False` leaves the in-flight gauge
    to the caller (the device process sets it from the frontends' own counts)."""

    def __init__(self, metrics: Metrics, in_flight: bool = True):
        self.metrics = metrics
        self.in_flight = in_flight

    def started(self) -> None:
        if self.in_flight:
            self.metrics.in_flight.inc()

    def finished(self, method: str, code: grpc.StatusCode, seconds: float, candidates: int) -> None:
        scoring = method in SCORING_METHODS
        if scoring and self.in_flight:
            self.metrics.in_flight.dec()
        if scoring and code == grpc.StatusCode.OK and candidates:
            self.metrics.request_candidates.observe(candidates)
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.request_latency.labels(method).observe(seconds)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the request path needs to know about the served model (no parameters)."""

    config: PhoenixModelConfig
    rows: TableRows
    info: pb.ModelInfo


@dataclasses.dataclass(frozen=True, eq=False)
class Decoded:
    """A scoring call's request, decoded, validated and hashed: what the queue scores (one
    entry per ranking request) and what its response is built from."""

    request_id: str  # the caller's, or "" (the service then assigns one)
    raws: tuple[RawRequest, ...]  # each ranking request in raw ids
    encoded: tuple[EncodedRequest, ...]  # the same, hashed: what the queue scores

    @property
    def candidates(self) -> int:
        return sum(r.num_candidates for r in self.raws)


class Codec(Protocol):
    """One scoring RPC's wire format: request bytes -> `Decoded`, scores -> response bytes.
    Both run on the event loop for small calls and on the host thread for large ones."""

    method: str  # the RPC's name: the `method` label of the metrics

    def decode(self, data: bytes, model: ModelFacts, limits: Limits) -> Decoded:
        """InvalidArgument naming the field for anything it cannot score."""
        ...

    def encode(self, decoded: Decoded, scored: Sequence[Scored], request_id: str) -> bytes: ...


class RankCodec:
    """`phoenix.ranking.v1.RankingService/Rank`: one request, its scores in request order."""

    method = "Rank"

    def decode(self, data: bytes, model: ModelFacts, limits: Limits) -> Decoded:
        raw = convert.decode_rank_request(data, model.config, limits)
        return Decoded(raw.request_id, (raw,), (encode(raw, model.config, model.rows),))

    def encode(self, decoded: Decoded, scored: Sequence[Scored], request_id: str) -> bytes:
        (raw,), (result,) = decoded.raws, scored
        a = NUM_ACTIONS
        return convert.rank_response_bytes(
            raw.candidate_post_ids, result.scores[:, :a], result.model_version, request_id,
            result.scores[:, a:],
        )  # fmt: skip


RANK = RankCodec()
SCORING_METHODS = frozenset({RANK.method})  # calls counted in phoenix_requests_in_flight


def add_to_server(service: RankingService, server: grpc.aio.Server) -> None:
    """Register the service like the generated `add_RankingServiceServicer_to_server`, except
    that every method takes and returns bytes (see `convert.rank_response_bytes`)."""
    name = pb.DESCRIPTOR.services_by_name["RankingService"].full_name
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(service.Rank),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(service.GetModelInfo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> grpc.StatusCode:
    """End the call with `code`: raises gRPC's AbortError once the status is on its way.
    Returns CANCELLED only if the client had already gone (cancelled, or its deadline passed
    while we worked), when nothing can be sent; the caller then ends the handler quietly."""
    try:
        await context.abort(code, details)
    except _CALL_GONE:
        return grpc.StatusCode.CANCELLED
    raise AssertionError("context.abort returned")


async def _gather(futures: Sequence[asyncio.Future]) -> list[Scored]:
    """Every request's scores; if one fails (or the call is cancelled), the others are
    cancelled too, so no work is left queued for an answer nobody reads."""
    try:
        return list(await asyncio.gather(*futures))
    except BaseException:
        for f in futures:
            f.cancel()
        raise


class RankingService:
    """The scoring RPCs and GetModelInfo, on raw bytes: decode -> admit -> wait -> encode."""

    def __init__(self, model: ModelFacts, queue: Queue, limits: Limits, recorder: Recorder,
                 lifecycle: Lifecycle):  # fmt: skip
        self.model = model
        self.queue = queue
        self.limits = limits
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.info = model.info
        self._host = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host")

    async def _off_loop_if(self, large: bool, fn, *args):
        if not large:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._host, fn, *args)

    async def Rank(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._score(RANK, data, context)

    async def _score(self, codec: Codec, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One scoring call: refused at the door if the lifecycle, its deadline or the queue
        already settle it; else decoded, admitted and queued, awaited, and encoded."""
        start = time.perf_counter()
        request_id = ""
        code = grpc.StatusCode.OK
        prepared = start  # when decoding, validation and hashing were done
        decoded: Decoded | None = None
        self.recorder.started()
        try:
            await self.lifecycle.admit()
            remaining = context.time_remaining()
            if remaining is None:
                remaining = self.limits.default_deadline_ms / 1000
            deadline = time.monotonic() + remaining
            self.queue.precheck(deadline)
            with self.lifecycle.entering():
                decoded = await self._off_loop_if(
                    len(data) > INLINE_BYTES, codec.decode, data, self.model, self.limits
                )
                request_id = decoded.request_id or uuid.uuid4().hex
                prepared = time.perf_counter()
                futures = []
                try:
                    for encoded in decoded.encoded:
                        futures.append(self.queue.submit(encoded, deadline))
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            scored = await _gather(futures)
            return await self._off_loop_if(
                decoded.candidates > INLINE_CANDIDATES, codec.encode, decoded, scored, request_id
            )
        except ServiceError as e:
            code = e.code
            if isinstance(e, InvalidArgument):
                _invalid_requests.warning(
                    "invalid %s request: %s", codec.method, e, fields={"request_id": request_id}
                )
            if isinstance(e, QueueFull):
                context.set_trailing_metadata((("grpc-retry-pushback-ms", str(e.retry_after_ms)),))
            code = await _abort(context, e.code, str(e))
            raise asyncio.CancelledError() from None
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            request_id = request_id or uuid.uuid4().hex
            log.exception(f"{codec.method} failed", extra={"fields": {"request_id": request_id}})
            code = await _abort(context, code, f"internal error (request_id={request_id})")
            raise asyncio.CancelledError() from None
        finally:
            elapsed = time.perf_counter() - start
            candidates = 0 if decoded is None else decoded.candidates
            self.recorder.finished(codec.method, code, elapsed, candidates)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(codec.method, extra={"fields": {
                    "request_id": request_id, "code": code.name, "bytes": len(data),
                    "requests": None if decoded is None else len(decoded.raws),
                    "candidates": None if decoded is None else candidates,
                    "prepare_ms": round((prepared - start) * 1000, 3),
                    "latency_ms": round(elapsed * 1000, 3),
                }})  # fmt: skip

    async def GetModelInfo(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            try:  # no fields today, but bytes that do not parse are still an invalid request
                pb.GetModelInfoRequest.FromString(data)
            except Exception as e:
                raise InvalidArgument(
                    "request", f"not a valid GetModelInfoRequest message ({e})"
                ) from None
            return self._info_bytes
        except ServiceError as e:
            code = e.code
            _invalid_requests.warning("invalid GetModelInfo request: %s", e)
            code = await _abort(context, e.code, str(e))
            raise asyncio.CancelledError() from None
        finally:
            self.recorder.finished("GetModelInfo", code, time.perf_counter() - start, 0)

    @property
    def info(self) -> pb.ModelInfo:
        return self._info

    @info.setter
    def info(self, info: pb.ModelInfo) -> None:
        """The model's description (GetModelInfo); replaced when a new version serves."""
        self._info = info
        self._info_bytes = info.SerializeToString()
