"""The transport's ceiling: a grpcio server whose Rank only parses the RankRequest.

    python bench/empty_server.py [--port 50071] [--refuse] [--sync]

grpcio's asyncio server by default; with `--sync`, its synchronous server (handlers on a pool
of 64 threads), the kind the ranking server's transport is (`server.door.transport`).

With `--refuse`, Rank parses nothing and answers RESOURCE_EXHAUSTED at once: what a call
refused by a Python handler costs grpcio at the least (`bench/host_path.py` measures its CPU
per call).

Answers Rank with an empty RankResponse after `RankRequest.FromString` (the least any server
must do per call) and GetModelInfo with a ModelInfo of the default model's shape, so the same
load generators run against it unchanged. `bench/host_path.py` measures its requests/s (E),
the bound that per-request host work is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from request.actions import ACTIONS  # noqa: E402
from server.rpc import ranking_pb2 as pb  # noqa: E402

SERVICE = pb.DESCRIPTOR.services_by_name["RankingService"].full_name


async def refuse(data: bytes, context) -> bytes:
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "refused")


async def rank(data: bytes, context) -> bytes:
    pb.RankRequest.FromString(data)
    return b""


async def model_info(request, context) -> pb.ModelInfo:
    return pb.ModelInfo(
        model_version="empty", actions=list(ACTIONS), history_seq_len=64, candidate_seq_len=32,
        max_candidates_per_request=2800, max_history_events=4096, product_surface_vocab_size=16,
    )  # fmt: skip


def sync_refuse(data: bytes, context) -> bytes:
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "refused")


def sync_rank(data: bytes, context) -> bytes:
    pb.RankRequest.FromString(data)
    return b""


def sync_model_info(request, context) -> pb.ModelInfo:
    return asyncio.run(model_info(request, context))


def handlers(rank_fn, info_fn) -> grpc.GenericRpcHandler:
    methods = {
        "Rank": grpc.unary_unary_rpc_method_handler(rank_fn),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            info_fn,
            request_deserializer=pb.GetModelInfoRequest.FromString,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def main(port: int, refusing: bool) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handlers(refuse if refusing else rank, model_info),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening {bound}", flush=True)
    await server.wait_for_termination()


def main_sync(port: int, refusing: bool) -> None:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(64), maximum_concurrent_rpcs=64,
                         options=[("grpc.so_reuseport", 0)])  # fmt: skip
    server.add_generic_rpc_handlers(
        (handlers(sync_refuse if refusing else sync_rank, sync_model_info),)
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening {bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50071)
    parser.add_argument("--refuse", action="store_true", help="answer RESOURCE_EXHAUSTED at once")
    parser.add_argument("--sync", action="store_true", help="grpcio's synchronous server")
    args = parser.parse_args()
    if args.sync:
        main_sync(args.port, args.refuse)
    else:
        asyncio.run(main(args.port, args.refuse))
