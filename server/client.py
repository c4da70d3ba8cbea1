"""A small synchronous Python client of the ranking service (CLI, tests, benchmarks)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.rpc import ranking_pb2 as pb
from server.rpc import ranking_pb2_grpc


def grpc_target(target: str) -> str:
    """`host:port` for gRPC from `host:port`, `[::1]:port` or `http://host:port[/]`.

    The Rust client takes the same forms, so one --target works with both.
    """
    text = target.strip()
    if text.startswith("https://"):
        raise ValueError(f"target {target!r}: this client speaks plaintext gRPC only")
    text = text.removeprefix("http://").rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"target {target!r} is not host:port or http://host:port")
    return text


class RankingClient:
    """One channel, reused for every call. Use as a context manager or call close()."""

    def __init__(self, target: str, timeout: float = 10.0):
        self.target = grpc_target(target)
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", 64 * 2**20)]
        )
        self.stub = ranking_pb2_grpc.RankingServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def rank(self, request: pb.RankRequest, timeout: float | None = None) -> pb.RankResponse:
        return self.stub.Rank(request, timeout=timeout or self.timeout)

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout or self.timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of `service`."""
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
