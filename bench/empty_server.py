"""The transport's ceiling: a grpcio aio server whose Rank only parses the RankRequest.

    python bench/empty_server.py [--port 50071] [--refuse]

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
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.actions import ACTIONS  # noqa: E402
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


async def main(port: int, refusing: bool) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(refuse if refusing else rank),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            model_info,
            request_deserializer=pb.GetModelInfoRequest.FromString,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening {bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50071)
    parser.add_argument("--refuse", action="store_true", help="answer RESOURCE_EXHAUSTED at once")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.refuse))
