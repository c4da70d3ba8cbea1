"""The gRPC layer: proto <-> domain types, validation and status codes, nothing else.

Each Rank call is validated and hashed on the event loop (host work that overlaps the device's
current batch), handed to the batcher, and awaited. Errors map to status codes through
`server.errors`; anything unexpected becomes INTERNAL carrying the request id and is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from model.actions import ACTIONS
from request.encoding import encode
from server import convert
from server.batcher import Batcher
from server.config import Limits
from server.errors import QueueFull, ServiceError, ShuttingDown
from server.metrics import Metrics
from server.rpc import ranking_pb2 as pb
from server.rpc import ranking_pb2_grpc
from server.runner import ModelRunner

log = logging.getLogger("phoenix.requests")


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
        "Rank": grpc.unary_unary_rpc_method_handler(
            service.Rank, request_deserializer=pb.RankRequest.FromString
        ),
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
        self.ready = False  # set once warm-up has compiled every batch shape
        self.draining = False  # set on shutdown
        self.last_call = time.monotonic()  # when the latest RPC arrived (for the lame-duck phase)

    async def Rank(self, request: pb.RankRequest, context: grpc.aio.ServicerContext):
        start = time.perf_counter()
        self.last_call = time.monotonic()
        request_id = request.request_id or uuid.uuid4().hex
        code = grpc.StatusCode.OK
        prepared = start  # when validation and hashing were done
        self.metrics.in_flight.inc()
        try:
            if self.draining:
                raise ShuttingDown("server is shutting down; retry on another replica")
            if not self.ready:
                raise ShuttingDown("server is warming up; retry shortly")
            raw = convert.raw_request_from_pb(request, self.runner.config, self.limits)
            encoded = encode(raw, self.runner.config, self.runner.checkpoint.rows)
            prepared = time.perf_counter()
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            logits = await self.batcher.submit(encoded, deadline)
            if raw.num_candidates:
                self.metrics.request_candidates.observe(raw.num_candidates)
            return convert.rank_response_bytes(
                raw.candidate_post_ids, logits, self.info.model_version, request_id
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
                            "candidates": len(request.candidates),
                            "history": len(request.history),
                            "prepare_ms": round((prepared - start) * 1000, 3),
                            "latency_ms": round(elapsed * 1000, 3),
                        }
                    },
                )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context):
        self.last_call = time.monotonic()
        self.metrics.requests.labels("GetModelInfo", grpc.StatusCode.OK.name).inc()
        return self.info
