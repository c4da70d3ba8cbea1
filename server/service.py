"""The gRPC layer: proto <-> domain types, validation and status codes, nothing else.

A Rank call arrives as raw bytes (no deserializer), so that everything about it, including
bytes that do not parse, is answered and counted here. In order:

1. Refuse before spending anything: shutting down or warming up (UNAVAILABLE), a deadline
   that has passed, or a queue already holding more work than it may (`Batcher.precheck`).
2. Decode, validate and hash (host work). Requests up to `INLINE_BYTES` are handled on the
   event loop, where a thread hop would cost more than the work; larger ones on the host
   thread, so that one large request holds the loop for no longer than Python's switch
   interval at a time, not for the milliseconds its decoding takes.
3. Hand the encoded request to the batcher, which admits it by work and deadline or refuses
   it (RESOURCE_EXHAUSTED with a computed retry hint, or DEADLINE_EXCEEDED), and await it.
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
from collections.abc import Awaitable
from typing import Protocol

import grpc

from model.actions import ACTIONS
from model.config import PhoenixModelConfig, TableRows
from request.encoding import EncodedRequest, encode
from request.raw import RawRequest
from server import convert
from server.batcher import Scored
from server.config import Limits
from server.errors import InvalidArgument, QueueFull, ServiceError, ShuttingDown
from server.logs import RateLimited
from server.metrics import Metrics
from server.rpc import ranking_pb2 as pb
from server.rpc import ranking_pb2_grpc

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

    def submit(self, encoded: EncodedRequest, deadline: float | None) -> Awaitable[Scored]:
        """Scores float32 [m, 2A] (logits, then probabilities) and the version that
        computed them."""
        ...


class Recorder(Protocol):
    """Where the service reports each call (Prometheus here, or the device process)."""

    def started(self) -> None: ...

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
        if method == "Rank" and self.in_flight:
            self.metrics.in_flight.dec()
        if method == "Rank" and code == grpc.StatusCode.OK and candidates:
            self.metrics.request_candidates.observe(candidates)
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.request_latency.labels(method).observe(seconds)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the request path needs to know about the served model (no parameters)."""

    config: PhoenixModelConfig
    rows: TableRows
    info: pb.ModelInfo


def add_to_server(service: RankingService, server: grpc.aio.Server) -> None:
    """Register the service like the generated `add_RankingServiceServicer_to_server`, except
    that Rank returns its response already serialized (see `convert.rank_response_bytes`)."""
    name = pb.DESCRIPTOR.services_by_name["RankingService"].full_name
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(service.Rank),  # bytes in, bytes out
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(service.GetModelInfo),  # bytes
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


class RankingService(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, model: ModelFacts, queue: Queue, limits: Limits, recorder: Recorder):
        self.model = model
        self.queue = queue
        self.limits = limits
        self.recorder = recorder
        self.info = model.info
        self._host = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host")
        self.ready = False  # set once warm-up has compiled every batch shape
        self._preparing = 0  # calls past the door and not yet handed to the batcher
        self._prepared = asyncio.Event()  # set whenever _preparing is 0
        self._prepared.set()
        self.draining = False  # set on shutdown
        self.parking = False  # set in the drain's lame-duck phase: new calls wait, then refused
        self._released = asyncio.Event()
        self.last_call = time.monotonic()  # when the latest RPC arrived (for the lame-duck phase)

    def _prepare(self, data: bytes) -> tuple[RawRequest, EncodedRequest]:
        """Decode, validate and hash a request (host work; any thread)."""
        raw = convert.decode_rank_request(data, self.model.config, self.limits)
        return raw, encode(raw, self.model.config, self.model.rows)

    async def _off_loop_if(self, large: bool, fn, *args):
        if not large:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._host, fn, *args)

    async def Rank(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        self.last_call = time.monotonic()
        request_id = ""
        code = grpc.StatusCode.OK
        prepared = start  # when decoding, validation and hashing were done
        raw = None
        self.recorder.started()
        try:
            if self.draining:
                if self.parking:  # held until the transport stops (see server.front)
                    await self._released.wait()
                raise ShuttingDown("server is shutting down; retry on another replica")
            if not self.ready:
                raise ShuttingDown("server is warming up; retry shortly")
            remaining = context.time_remaining()
            if remaining is None:
                remaining = self.limits.default_deadline_ms / 1000
            deadline = time.monotonic() + remaining
            self.queue.precheck(deadline)
            self._preparing += 1
            self._prepared.clear()
            try:
                raw, encoded = await self._off_loop_if(
                    len(data) > INLINE_BYTES, self._prepare, data
                )
                request_id = raw.request_id or uuid.uuid4().hex
                prepared = time.perf_counter()
                future = self.queue.submit(encoded, deadline)
            finally:
                self._preparing -= 1
                if not self._preparing:
                    self._prepared.set()
            scored = await future  # Scored: [m, 2A] and the version that computed them
            a = len(ACTIONS)
            return await self._off_loop_if(
                raw.num_candidates > INLINE_CANDIDATES,
                convert.rank_response_bytes,
                raw.candidate_post_ids,
                scored.scores[:, :a],
                scored.model_version,
                request_id,
                scored.scores[:, a:],
            )
        except ServiceError as e:
            code = e.code
            if isinstance(e, InvalidArgument):
                _invalid_requests.warning(
                    "invalid Rank request: %s", e, fields={"request_id": request_id}
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
            log.exception("Rank failed", extra={"fields": {"request_id": request_id}})
            code = await _abort(context, code, f"internal error (request_id={request_id})")
            raise asyncio.CancelledError() from None
        finally:
            elapsed = time.perf_counter() - start
            self.recorder.finished("Rank", code, elapsed, 0 if raw is None else raw.num_candidates)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "Rank",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "code": code.name,
                            "bytes": len(data),
                            "candidates": None if raw is None else raw.num_candidates,
                            "history": None if raw is None else raw.num_history,
                            "prepare_ms": round((prepared - start) * 1000, 3),
                            "latency_ms": round(elapsed * 1000, 3),
                        }
                    },
                )

    def release_parked(self) -> None:
        """Answer the parked calls (UNAVAILABLE), and any later one at once."""
        self._released.set()

    async def preparing_done(self) -> None:
        """Wait until no call is between the door and the batcher (used on shutdown, after
        `draining` is set, so that a call that arrived before it is queued, not refused)."""
        await self._prepared.wait()

    async def GetModelInfo(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.last_call = time.monotonic()
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
