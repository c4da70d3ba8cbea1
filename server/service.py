"""The gRPC layer: wire formats <-> domain types, validation and status codes, nothing else.

Two services on one port, every method on raw bytes (no deserializer), so that everything
about a call, including bytes that do not parse, is answered and counted here:

  phoenix.ranking.v1.RankingService   Rank, GetModelInfo
  xai.recsys.v1.RecsysPredictor       PredictNextActions, ReloadModel (an admin call)

A scoring call (Rank, PredictNextActions) is a `server.codecs.Codec` on one path,
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
   await them all (one failing cancels the others).
4. Write the response bytes (numpy), off the loop beyond `INLINE_CANDIDATES`.

Call metadata: `x-request-id` (else `request-id`) names the call in logs and errors, else the
request's own id, else one is made up; `x-client-name` labels `phoenix_client_requests_total`;
`x-request-send-time-ms` feeds `phoenix_network_delay_seconds`; the deadline is gRPC's own.

Errors map to status codes through `server.errors`; anything unexpected becomes INTERNAL
carrying the request id and is logged. Every call is counted in `phoenix_requests_total` with
its final code, including refusals, undecodable bytes and client cancellations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc

from model.config import PhoenixModelConfig, TableRows
from request.encoding import EncodedRequest
from server.batcher import Scored
from server.checkpoint_dir import ReloadState
from server.codecs import Codec, Decoded, PredictCodec, RankCodec
from server.config import Limits
from server.errors import InvalidArgument, QueueFull, ServiceError, Unimplemented
from server.lifecycle import Lifecycle
from server.logs import RateLimited
from server.metrics import CallRecord
from server.rpc import ranking_pb2 as pb
from server.rpc import recsys_pb2 as xpb

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
# A caller's name (x-client-name) as a metric label: these characters, this long at most.
_CLIENT_NAME = re.compile(r"[^A-Za-z0-9._-]")
MAX_CLIENT_NAME = 64


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
        """A scoring call began; its `finished` (a record with `scoring`) follows."""

    def finished(self, record: CallRecord) -> None: ...


class Admin(Protocol):
    """The admin calls' side of the server (`server.app`, or the link to it)."""

    async def reload(self, check_now: bool) -> ReloadState:
        """Check --checkpoint-dir now when `check_now` (FailedPrecondition without one)."""
        ...


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the request path needs to know about the served model (no parameters)."""

    config: PhoenixModelConfig
    rows: TableRows
    info: pb.ModelInfo


@dataclasses.dataclass(frozen=True)
class CallMetadata:
    """What the service reads of a call's metadata (see the module docstring)."""

    request_id: str = ""
    client: str = ""
    network_delay_s: float | None = None

    @classmethod
    def of(cls, metadata: Sequence[tuple[str, str | bytes]] | None, now_s: float) -> CallMetadata:
        """From gRPC's invocation metadata; `now_s`: the wall clock (seconds since the epoch)."""
        found: dict[str, str] = {}
        for key, value in metadata or ():
            if key in ("x-request-id", "request-id", "x-client-name", "x-request-send-time-ms"):
                found.setdefault(key, value if isinstance(value, str) else value.decode("latin-1"))
        delay = None
        try:
            sent_ms = float(found["x-request-send-time-ms"])
            if sent_ms == sent_ms and abs(now_s * 1000 - sent_ms) < 3_600_000:  # finite, sane
                delay = max(0.0, now_s - sent_ms / 1000)  # clocks differ: never negative
        except (KeyError, ValueError):
            pass
        request_id = found.get("x-request-id") or found.get("request-id") or ""
        client = _CLIENT_NAME.sub("_", found.get("x-client-name", ""))[:MAX_CLIENT_NAME]
        return cls(request_id.encode()[:128].decode(errors="ignore"), client, delay)


RANK = RankCodec()


def add_to_server(service: RankingService, server: grpc.aio.Server) -> None:
    """Register both services like their generated `add_*Servicer_to_server`, except that every
    method takes and returns bytes (the codecs write responses themselves)."""
    services = {
        pb.DESCRIPTOR.services_by_name["RankingService"].full_name: {
            "Rank": service.Rank, "GetModelInfo": service.GetModelInfo,
        },
        xpb.DESCRIPTOR.services_by_name["RecsysPredictor"].full_name: {
            "PredictNextActions": service.PredictNextActions, "ReloadModel": service.ReloadModel,
        },
    }  # fmt: skip
    for name, methods in services.items():
        handlers = {m: grpc.unary_unary_rpc_method_handler(fn) for m, fn in methods.items()}
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
    """The RPCs of both services, on raw bytes: a scoring call is decode -> admit -> wait ->
    encode. `admin`: the admin calls' side; None turns them off (UNIMPLEMENTED)."""

    def __init__(self, model: ModelFacts, queue: Queue, limits: Limits, recorder: Recorder,
                 lifecycle: Lifecycle, admin: Admin | None = None):  # fmt: skip
        self.model = model
        self.queue = queue
        self.limits = limits
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.admin = admin
        self.info = model.info
        self.predict = PredictCodec.from_environment()
        self._host = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host")

    async def _off_loop_if(self, large: bool, fn, *args):
        if not large:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._host, fn, *args)

    async def Rank(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._score(RANK, data, context)

    async def PredictNextActions(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._score(self.predict, data, context)

    async def _score(self, codec: Codec, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One scoring call: refused at the door if the lifecycle, its deadline or the queue
        already settle it; else decoded, admitted and queued, awaited, and encoded."""
        start = time.perf_counter()
        meta = CallMetadata.of(context.invocation_metadata(), time.time())
        request_id = meta.request_id
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
                request_id = request_id or decoded.request_id or uuid.uuid4().hex
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
            code = e.code  # what is counted: _refuse raises once the status is on its way
            code = await self._refuse(codec.method, e, request_id, context)
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
            self.recorder.finished(CallRecord(codec.method, code, elapsed, candidates, True,
                                              meta.client, meta.network_delay_s))  # fmt: skip
            if log.isEnabledFor(logging.DEBUG):
                log.debug(codec.method, extra={"fields": {
                    "request_id": request_id, "code": code.name, "bytes": len(data),
                    "requests": None if decoded is None else len(decoded.raws),
                    "candidates": None if decoded is None else candidates,
                    "client": meta.client or None,
                    "prepare_ms": round((prepared - start) * 1000, 3),
                    "latency_ms": round(elapsed * 1000, 3),
                }})  # fmt: skip

    async def _refuse(self, method: str, error: ServiceError, request_id: str,
                      context: grpc.aio.ServicerContext) -> grpc.StatusCode:  # fmt: skip
        """Answer a ServiceError with its code (and retry hint): raises gRPC's AbortError once
        the status is on its way, or returns CANCELLED if the client had gone (see `_abort`)."""
        if isinstance(error, InvalidArgument):
            _invalid_requests.warning("invalid %s request: %s", method, error,
                                      fields={"request_id": request_id})  # fmt: skip
        if isinstance(error, QueueFull):
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(error.retry_after_ms)),))
        return await _abort(context, error.code, str(error))

    async def _answer(self, method: str, data: bytes, context: grpc.aio.ServicerContext,
                      answer: Callable[[bytes], Awaitable[bytes]]) -> bytes:  # fmt: skip
        """A call that scores nothing (GetModelInfo, ReloadModel): `answer(data)`, its
        ServiceErrors as their codes, counted."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        meta = CallMetadata.of(context.invocation_metadata(), time.time())
        try:
            return await answer(data)
        except ServiceError as e:
            code = e.code
            code = await self._refuse(method, e, meta.request_id, context)
            raise asyncio.CancelledError() from None
        finally:
            self.recorder.finished(CallRecord(method, code, time.perf_counter() - start,
                                              client=meta.client,
                                              network_delay_s=meta.network_delay_s))  # fmt: skip

    async def GetModelInfo(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async def answer(data: bytes) -> bytes:
            _parse(pb.GetModelInfoRequest, data)  # no fields, but bytes must parse
            return self._info_bytes

        return await self._answer("GetModelInfo", data, context, answer)

    async def ReloadModel(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async def answer(data: bytes) -> bytes:
            if self.admin is None:
                raise Unimplemented(
                    "ReloadModel is an admin call, off on this server (--admin-rpcs)"
                )
            request = _parse(xpb.ReloadModelRequest, data)
            if request.copy_urls:
                raise Unimplemented(
                    "copy_urls: this server loads versions from files in --checkpoint-dir, "
                    "not from URLs; copy <N>.safetensors there instead"
                )
            state = await self.admin.reload(request.do_reload)
            return xpb.ReloadModelResponse(
                reload_in_progress=state.in_progress,
                current_checkpoint_timestamp=state.checkpoint_timestamp,
                serving_prefix=state.serving_version, peer_ready=False,
            ).SerializeToString()  # fmt: skip

        return await self._answer("ReloadModel", data, context, answer)

    @property
    def info(self) -> pb.ModelInfo:
        return self._info

    @info.setter
    def info(self, info: pb.ModelInfo) -> None:
        """The model's description (GetModelInfo); replaced when a new version serves."""
        self._info = info
        self._info_bytes = info.SerializeToString()


def _parse(message_type, data: bytes):
    try:
        return message_type.FromString(data)
    except Exception as e:
        raise InvalidArgument(
            "request", f"not a valid {message_type.DESCRIPTOR.name} message ({e})"
        ) from None
