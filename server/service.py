"""The gRPC layer: proto <-> domain types, validation and status codes, nothing else.

A Rank call arrives as raw bytes (no deserializer), so that everything about it, including
bytes that do not parse, is answered and counted here. In order:

1. Refuse before spending anything: shutting down or warming up (UNAVAILABLE), a deadline
   that has passed, or a queue already holding more work than it may (`Batcher.precheck`).
2. Decode, validate and hash (host work). Requests up to `INLINE_BYTES` are handled on the
   event loop, where a thread hop would cost more than the work; larger ones on the host
   thread, so that one 4 MB request holds the loop for no longer than Python's switch
   interval, not for the hundreds of milliseconds its decoding takes.
3. Hand the encoded request to the batcher, which admits it by work and deadline or refuses
   it (RESOURCE_EXHAUSTED with a computed retry hint, or DEADLINE_EXCEEDED), and await it.
4. Serialize the response with numpy (`convert.rank_response_bytes`), off the loop when large.

Errors map to status codes through `server.errors`; anything unexpected becomes INTERNAL
carrying the request id and is logged. Every call is counted in `phoenix_requests_total` with
its final code, including refusals, undecodable bytes and client cancellations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid

import grpc

from model.actions import ACTIONS
from request.encoding import EncodedRequest, encode
from request.raw import RawRequest
from server import convert
from server.batcher import Batcher
from server.config import Limits
from server.errors import QueueFull, ServiceError, ShuttingDown
from server.metrics import Metrics
from server.rpc import ranking_pb2 as pb
from server.rpc import ranking_pb2_grpc
from server.runner import ModelRunner

log = logging.getLogger("phoenix.requests")

# Requests (and responses) up to this many bytes are decoded (serialized) on the event loop:
# ~50 us of work, less than a hop to the host thread and back. A 32-candidate request in the
# row form is ~2.4 KB, a 2,800-candidate one in the columnar form ~56 KB.
INLINE_BYTES = 16 * 1024


def model_info(runner: ModelRunner, limits: Limits) -> pb.ModelInfo:
    c, m, h = runner.config, runner.config.model, runner.config.hash_config
    info = runner.checkpoint.info
    return pb.ModelInfo(
        model_version=info.model_version,
        actions=list(ACTIONS),
        history_seq_len=c.history_seq_len,
        candidate_seq_len=c.candidate_seq_len,
        max_candidates_per_request=limits.max_candidates_per_request,
        max_history_events=limits.max_history_events,
        checkpoint_sha256=info.file_sha256,
        checkpoint_created_at=info.created_at,
        emb_size=c.emb_size,
        num_layers=m.num_layers,
        num_q_heads=m.num_q_heads,
        num_kv_heads=m.num_kv_heads,
        key_size=m.key_size,
        widening_factor=m.widening_factor,
        attn_output_multiplier=m.attn_output_multiplier,
        product_surface_vocab_size=c.product_surface_vocab_size,
        num_user_hashes=h.num_user_hashes,
        num_item_hashes=h.num_item_hashes,
        num_author_hashes=h.num_author_hashes,
        rope_positions=c.rope_positions,
        history_attention=c.history_attention,
        user_table_rows=runner.checkpoint.rows.user,
        post_table_rows=runner.checkpoint.rows.post,
        author_table_rows=runner.checkpoint.rows.author,
        num_parameters=runner.num_parameters,
        compute_dtype=runner.dtype.name,
        backend=runner.backend,
    )


def add_to_server(service: RankingService, server: grpc.aio.Server) -> None:
    """Register the service like the generated `add_RankingServiceServicer_to_server`, except
    that Rank returns its response already serialized (see `convert.rank_response_bytes`)."""
    name = pb.DESCRIPTOR.services_by_name["RankingService"].full_name
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(service.Rank),  # bytes in, bytes out
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            service.GetModelInfo,
            request_deserializer=pb.GetModelInfoRequest.FromString,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class RankingService(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, runner: ModelRunner, batcher: Batcher, limits: Limits, metrics: Metrics):
        self.runner = runner
        self.batcher = batcher
        self.limits = limits
        self.metrics = metrics
        self.info = model_info(runner, limits)
        self._host = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host")
        self.ready = False  # set once warm-up has compiled every batch shape
        self._preparing = 0  # calls past the door and not yet handed to the batcher
        self._prepared = asyncio.Event()  # set whenever _preparing is 0
        self._prepared.set()
        self.draining = False  # set on shutdown
        self.last_call = time.monotonic()  # when the latest RPC arrived (for the lame-duck phase)

    def _prepare(self, data: bytes) -> tuple[RawRequest, EncodedRequest]:
        """Decode, validate and hash a request (host work; any thread)."""
        raw = convert.decode_rank_request(data, self.runner.config, self.limits)
        return raw, encode(raw, self.runner.config, self.runner.checkpoint.rows)

    async def _off_loop_if_large(self, size: int, fn, *args):
        if size <= INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._host, fn, *args)

    async def Rank(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        self.last_call = time.monotonic()
        request_id = ""
        code = grpc.StatusCode.OK
        prepared = start  # when decoding, validation and hashing were done
        raw = None
        self.metrics.in_flight.inc()
        try:
            if self.draining:
                raise ShuttingDown("server is shutting down; retry on another replica")
            if not self.ready:
                raise ShuttingDown("server is warming up; retry shortly")
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            self.batcher.precheck(deadline)
            self._preparing += 1
            self._prepared.clear()
            try:
                raw, encoded = await self._off_loop_if_large(len(data), self._prepare, data)
                request_id = raw.request_id or uuid.uuid4().hex
                prepared = time.perf_counter()
                future = self.batcher.submit(encoded, deadline)
            finally:
                self._preparing -= 1
                if not self._preparing:
                    self._prepared.set()
            scores = await future  # [m, 2A]
            if raw.num_candidates:
                self.metrics.request_candidates.observe(raw.num_candidates)
            a = len(ACTIONS)
            return await self._off_loop_if_large(
                32 * raw.num_candidates,
                convert.rank_response_bytes,
                raw.candidate_post_ids,
                scores[:, :a],
                self.info.model_version,
                request_id,
                scores[:, a:],
            )
        except ServiceError as e:
            code = e.code
            if isinstance(e, QueueFull):
                context.set_trailing_metadata((("grpc-retry-pushback-ms", str(e.retry_after_ms)),))
            await context.abort(e.code, str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            request_id = request_id or uuid.uuid4().hex
            log.exception("Rank failed", extra={"fields": {"request_id": request_id}})
            await context.abort(code, f"internal error (request_id={request_id})")
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels("Rank", code.name).inc()
            self.metrics.request_latency.labels("Rank").observe(elapsed)
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

    async def preparing_done(self) -> None:
        """Wait until no call is between the door and the batcher (used on shutdown, after
        `draining` is set, so that a call that arrived before it is queued, not refused)."""
        await self._prepared.wait()

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context):
        self.last_call = time.monotonic()
        self.metrics.requests.labels("GetModelInfo", grpc.StatusCode.OK.name).inc()
        return self.info
