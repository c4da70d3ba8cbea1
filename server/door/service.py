"""The gRPC layer: wire formats <-> domain types, validation and status codes, nothing else.

Two services on one port, every method on raw bytes (no deserializer), so that everything
about a call, including bytes that do not parse, is answered and counted here:

  phoenix.ranking.v1.RankingService   Rank, GetModelInfo
  xai.recsys.v1.RecsysPredictor       PredictNextActions, ReloadModel (an admin call)

Threads. Handlers run on gRPC's own handler threads (the transport, `server.door.transport`, is
gRPC's synchronous server: it refuses calls past its limit before any handler runs). A
handler thread does only what belongs to its call: the refusal at the door, receiving the
body, the final status. The rest (decoding, queueing, writing the response) runs on the
asyncio event loop the queue lives on, reached with one thread-safe hop; bodies and responses
past a size run on a host thread beside it. Python runs one thread at a time, so spreading
that work over the handler threads would not run it in parallel; it would add thread switches
that delay the loop and gRPC's polling thread (which refuses calls).

A scoring call (Rank, PredictNextActions) is a `server.contracts.codecs.Codec` on one path,
`RankingService._score`:

1. Refuse before spending anything (`server.operations.lifecycle`, then the queue): starting, warming up
   or shutting down (UNAVAILABLE), a deadline that has passed, or a queue already holding
   more work than it may (`precheck`: RESOURCE_EXHAUSTED with a retry hint).
2. Receive the request body (`server.door.call_limits.ReceiveWatchdog`: a body late by
   `--receive-timeout-s` ends the call DEADLINE_EXCEEDED); on the loop, decode, validate and
   hash.
3. Hand each ranking request to the queue, which admits it by work and deadline or refuses
   it (RESOURCE_EXHAUSTED with a computed retry hint, or DEADLINE_EXCEEDED), and wait for
   them all. The call's end (its client cancelling, its deadline passing) cancels its
   requests on the queue: work nobody waits for is dropped before it reaches the device.
4. Write the response bytes (numpy).

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
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import grpc

from model.config import PhoenixModelConfig
from request.encoding import EncodedRequest
from request.hashing import TableRows
from server.config import Limits
from server.contracts.codecs import Codec, Decoded, PredictCodec, RankCodec
from server.door.call_limits import CallEnded, deadline_remaining_s, ended_code
from server.errors import DataLoss, InvalidArgument, QueueFull, ServiceError, Unimplemented
from server.operations.checkpoint_dir import ReloadState
from server.operations.lifecycle import Lifecycle
from server.operations.logs import RateLimited
from server.operations.metrics import CallRecord
from server.rpc import ranking_pb2 as pb
from server.rpc import recsys_pb2 as xpb

log = logging.getLogger("phoenix.requests")
# Bad requests are the caller's doing and can come by the thousand: one line a second at most;
# so can DATA_LOSS answers of a model gone bad (until it is withdrawn).
_invalid_requests = RateLimited(log)
_data_losses = RateLimited(log)

# The longest an admin call waits for the serving process's answer.
ADMIN_SECONDS = 10.0
# Requests whose decoding costs up to this many bytes of work (`Codec.cost`: a RankRequest's
# bytes, ~3 ns each) are decoded on the event loop: ~50 us of work, less than a hop to a host
# thread and back. A 32-candidate Rank in the row form is ~2.4 KB, a 2,800-candidate one in
# the columnar form ~56 KB. Costlier ones are decoded on the host thread; those that may
# inflate past their own size (a compressed history, an Arrow stream: up to the request
# limit's worth of bytes, whatever their size) on a thread of their own, so a small request
# that inflates stalls neither the loop (the queue, the batcher) nor the other calls' decoding.
INLINE_BYTES = 16 * 1024
# Responses for up to this many candidates are serialized on the event loop (~90 us at 512).
INLINE_CANDIDATES = 512
# A caller's name (x-client-name) as a metric label: these characters, this long at most.
_CLIENT_NAME = re.compile(r"[^A-Za-z0-9._-]")
MAX_CLIENT_NAME = 64


class Queue(Protocol):
    """Where the service hands encoded requests: the Batcher, or (in a frontend worker) the
    link to the process that owns the device. Both refuse by raising a ServiceError."""

    def precheck(self, deadline: float | None) -> None:
        """Any thread: refuse at once what no queue state would admit now."""

    def fullness_s(self) -> float:
        """Any thread: a typical request with fewer seconds than this to its deadline would
        be refused for want of room now (`server.scheduling.admission.fullness_s`)."""
        ...

    def retry_hint_ms(self) -> int:
        """Any thread: the retry hint of a refusal at the transport, in ms."""
        ...

    def submit(self, encoded: EncodedRequest, deadline: float | None) -> asyncio.Future:
        """On the queue's loop: scores float32 [m, 2A] (logits, then probabilities) and the
        version that computed them; cancelling the future drops the request."""
        ...


class Recorder(Protocol):
    """Where the service reports each call (Prometheus here, or the device process). Called
    from handler threads."""

    def started(self) -> None:
        """A scoring call began; its `finished` (a record with `scoring`) follows."""

    def finished(self, record: CallRecord) -> None: ...


class Admin(Protocol):
    """The admin calls' side of the server (`server.publication`, or the link to it)."""

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


@dataclasses.dataclass(eq=False)
class _Work:
    """What a scoring call's handler thread learns from the loop's part, for its record."""

    request_id: str  # the call's (metadata), else the request's, else made up
    prepared: float  # when decoding, validation and hashing were done (perf_counter s)
    decoded: Decoded | None = None


def add_to_server(service: RankingService, server: grpc.Server) -> None:
    """Register both services. Every method takes its request as a stream of bytes (so that
    its handler starts on the call's headers, and a late body can be timed out) and returns
    bytes (the codecs write responses themselves); clients see ordinary unary calls."""
    services = {
        pb.DESCRIPTOR.services_by_name["RankingService"].full_name: {
            "Rank": service.Rank, "GetModelInfo": service.GetModelInfo,
        },
        xpb.DESCRIPTOR.services_by_name["RecsysPredictor"].full_name: {
            "PredictNextActions": service.PredictNextActions, "ReloadModel": service.ReloadModel,
        },
    }  # fmt: skip
    for name, methods in services.items():
        handlers = {m: grpc.stream_unary_rpc_method_handler(fn) for m, fn in methods.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)


def _end(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End the call with `code`: raises the exception gRPC expects from `abort`."""
    context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _unlink(error: BaseException) -> None:
    """Drop a handled error's traceback. An error from the loop is the object its future
    keeps; raised again in the handler, its traceback holds the handler's frame, hence the
    call's context, whose callbacks hold the future: a cycle that keeps the call, and its
    HTTP/2 stream, open until the garbage collector's next full pass (seen as calls in flight
    long after they were answered)."""
    error.__traceback__ = None


def _seen(context: grpc.ServicerContext, code: grpc.StatusCode) -> grpc.StatusCode:
    """The code a call ending now with `code` has for its client: its own if the call is
    still open, else how it ended (`server.door.call_limits.ended_code`)."""
    return code if context.is_active() else ended_code(context)


class RankingService:
    """The RPCs of both services, on raw bytes: a scoring call is decode -> admit -> wait ->
    encode. `loop`: the event loop the queue (and the admin side) live on. `receive`: a
    call's request message (`server.door.call_limits.ReceiveWatchdog.receive`). `admin`: the admin
    calls' side; None turns them off (UNIMPLEMENTED)."""

    def __init__(self, model: ModelFacts, queue: Queue, limits: Limits, recorder: Recorder,
                 lifecycle: Lifecycle, loop: asyncio.AbstractEventLoop,
                 receive: Callable[[Iterator[bytes], grpc.ServicerContext], bytes],
                 admin: Admin | None = None):  # fmt: skip
        self.model = model
        self.queue = queue
        self.limits = limits
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.loop = loop
        self.receive = receive
        self.admin = admin
        self.info = model.info
        self.predict = PredictCodec.from_environment()
        self.queued_calls = 0  # calls whose requests are all queued (on the loop; any thread reads)
        self._host = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host")
        self._inflate = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inflate")

    def Rank(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return self._score(RANK, requests, context)

    def PredictNextActions(self, requests: Iterator[bytes], context: grpc.ServicerContext
                           ) -> bytes:  # fmt: skip
        return self._score(self.predict, requests, context)

    async def _handled(self, codec: Codec, data: bytes, deadline: float,
                       work: _Work) -> bytes:  # fmt: skip
        """On the loop: decode, queue (or be refused), wait for the scores, encode. Host work
        of small calls runs here, of large ones on the host thread (one large decode would
        otherwise hold the loop for milliseconds). One request failing, or this being
        cancelled (the call ended), cancels the call's other requests."""
        with self.lifecycle.entering():
            work.decoded = decoded = await self._decoded(codec, data)
            work.request_id = work.request_id or decoded.request_id
            work.prepared = time.perf_counter()
            futures = []
            try:
                for request in decoded.encoded:
                    futures.append(self.queue.submit(request, deadline))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        self.queued_calls += 1  # waiting for the device, not for the host (the door reads it)
        try:
            scored = list(await asyncio.gather(*futures))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            self.queued_calls -= 1
        work.request_id = work.request_id or uuid.uuid4().hex
        return await self._off_loop_if(decoded.candidates > INLINE_CANDIDATES, codec.encode,
                                       decoded, scored, work.request_id)  # fmt: skip

    async def _off_loop_if(self, large: bool, fn, *args):
        if not large:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._host, fn, *args)

    async def _decoded(self, codec: Codec, data: bytes) -> Decoded:
        """The request decoded where its cost says (see INLINE_BYTES)."""
        cost = codec.cost(data, self.limits)
        if cost.work <= INLINE_BYTES and not cost.inflates:
            return codec.decode(data, self.model, self.limits)
        pool = self._inflate if cost.inflates else self._host
        return await asyncio.get_running_loop().run_in_executor(
            pool, codec.decode, data, self.model, self.limits
        )

    def _score(self, codec: Codec, requests: Iterator[bytes], context: grpc.ServicerContext
               ) -> bytes:  # fmt: skip
        """One scoring call (see the module docstring), on its handler thread: what only the
        call's thread can do (its refusal at the door, its body, its status) is done here, the
        rest on the loop (`_handled`)."""
        start = time.perf_counter()
        meta = CallMetadata.of(context.invocation_metadata(), time.time())
        work = _Work(meta.request_id, start)
        code = grpc.StatusCode.OK
        size = 0
        self.recorder.started()
        try:
            self.lifecycle.admit()
            remaining = deadline_remaining_s(context.time_remaining())
            if remaining is None:
                remaining = self.limits.default_deadline_ms / 1000
            deadline = time.monotonic() + remaining
            self.queue.precheck(deadline)
            with self.lifecycle.entering():  # until the loop has the call (it enters too)
                data = self.receive(requests, context)
                size = len(data)
                pending = asyncio.run_coroutine_threadsafe(
                    self._handled(codec, data, deadline, work), self.loop
                )
            if not context.add_callback(pending.cancel):  # the call ended already
                pending.cancel()
            try:
                return pending.result()
            except concurrent.futures.CancelledError:
                raise CallEnded(_seen(context, grpc.StatusCode.CANCELLED)) from None
        except ServiceError as e:
            code = _seen(context, e.code)
            _unlink(e)
            if isinstance(e, DataLoss):
                work.request_id = work.request_id or uuid.uuid4().hex
            self._refuse(codec.method, e, work.request_id, context)
        except CallEnded as e:
            code = e.code
            _end(context, e.code, "the call ended")  # nothing reaches the client
        except Exception as e:
            request_id = work.request_id = work.request_id or uuid.uuid4().hex
            log.exception(f"{codec.method} failed", extra={"fields": {"request_id": request_id}})
            code = _seen(context, grpc.StatusCode.INTERNAL)
            _unlink(e)
            _end(context, grpc.StatusCode.INTERNAL, f"internal error (request_id={request_id})")
        finally:
            elapsed = time.perf_counter() - start
            decoded = work.decoded
            candidates = 0 if decoded is None else decoded.candidates
            self.recorder.finished(CallRecord(codec.method, code, elapsed, candidates, True,
                                              meta.client, meta.network_delay_s))  # fmt: skip
            if log.isEnabledFor(logging.DEBUG):
                log.debug(codec.method, extra={"fields": {
                    "request_id": work.request_id, "code": code.name, "bytes": size,
                    "requests": None if decoded is None else len(decoded.raws),
                    "candidates": None if decoded is None else candidates,
                    "client": meta.client or None,
                    "prepare_ms": round((work.prepared - start) * 1000, 3),
                    "latency_ms": round(elapsed * 1000, 3),
                }})  # fmt: skip

    def _refuse(self, method: str, error: ServiceError, request_id: str,
                context: grpc.ServicerContext) -> None:  # fmt: skip
        """End the call with a ServiceError's code (and retry hint), logging an invalid
        request (one line a second at most). Raises, as `context.abort` does."""
        details = str(error)
        if isinstance(error, InvalidArgument):
            _invalid_requests.warning("invalid %s request: %s", method, error,
                                      fields={"request_id": request_id})  # fmt: skip
        elif isinstance(error, DataLoss):
            details = f"{details} (request_id={request_id})"
            _data_losses.error("%s answered DATA_LOSS: %s", method, details,
                               fields={"request_id": request_id})  # fmt: skip
        if isinstance(error, QueueFull):
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(error.retry_after_ms)),))
        _end(context, error.code, details)

    def _answer(self, method: str, requests: Iterator[bytes], context: grpc.ServicerContext,
                answer: Callable[[bytes], bytes]) -> bytes:  # fmt: skip
        """A call that scores nothing (GetModelInfo, ReloadModel): `answer(its request)`, its
        ServiceErrors as their codes, counted."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        meta = CallMetadata.of(context.invocation_metadata(), time.time())
        try:
            return answer(self.receive(requests, context))
        except ServiceError as e:
            code = _seen(context, e.code)
            _unlink(e)
            self._refuse(method, e, meta.request_id, context)
        except CallEnded as e:
            code = e.code
            _end(context, e.code, "the call ended")
        finally:
            self.recorder.finished(CallRecord(method, code, time.perf_counter() - start,
                                              client=meta.client,
                                              network_delay_s=meta.network_delay_s))  # fmt: skip

    def GetModelInfo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        def answer(data: bytes) -> bytes:
            _parse(pb.GetModelInfoRequest, data)  # no fields, but bytes must parse
            return self._info_bytes

        return self._answer("GetModelInfo", requests, context, answer)

    def ReloadModel(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        def answer(data: bytes) -> bytes:
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
            pending = asyncio.run_coroutine_threadsafe(
                self.admin.reload(request.do_reload), self.loop
            )
            state = pending.result(timeout=ADMIN_SECONDS)
            return xpb.ReloadModelResponse(
                reload_in_progress=state.in_progress,
                current_checkpoint_timestamp=state.checkpoint_timestamp,
                serving_prefix=state.serving_version, peer_ready=False,
            ).SerializeToString()  # fmt: skip

        return self._answer("ReloadModel", requests, context, answer)

    @property
    def info(self) -> pb.ModelInfo:
        return self._info

    @info.setter
    def info(self, info: pb.ModelInfo) -> None:
        """The model's description (GetModelInfo); replaced when a new version serves."""
        self._info, self._info_bytes = info, info.SerializeToString()


def _parse(message_type, data: bytes):
    try:
        return message_type.FromString(data)
    except Exception as e:
        raise InvalidArgument(
            "request", f"not a valid {message_type.DESCRIPTOR.name} message ({e})"
        ) from None
