"""A small synchronous Python client of the ranking service (CLI, tests, benchmarks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.rpc import ranking_pb2 as pb
from server.rpc import ranking_pb2_grpc, recsys_pb2_grpc
from server.rpc import recsys_pb2 as xpb


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """TLS for the channel: `ca` verifies the server (empty: the system roots); `cert` and
    `key` are this client's certificate for mutual TLS; `server_name` overrides the name the
    server's certificate is checked against (default: the target's host)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def parse_target(target: str) -> tuple[str, bool]:
    """(`host:port`, TLS?) from `host:port`, `[::1]:port`, `http://host:port[/]` or
    `https://host:port[/]` (https implies TLS). The Rust client takes the same forms."""
    text = target.strip()
    tls = text.startswith("https://")
    text = text.removeprefix("https://").removeprefix("http://").rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"target {target!r} is not host:port or http(s)://host:port")
    return text, tls


class RankingClient:
    """One channel, reused for every call. Use as a context manager or call close().
    TLS when `tls` is given or the target is https://."""

    def __init__(self, target: str, timeout: float = 10.0, tls: ClientTLS | None = None):
        self.target, https = parse_target(target)
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", 64 * 2**20)]
        if tls is None and https:
            tls = ClientTLS()
        if tls is None:
            self.channel = grpc.insecure_channel(self.target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(self.target, tls.credentials(), options=options)
        self.stub = ranking_pb2_grpc.RankingServiceStub(self.channel)
        self.xai = recsys_pb2_grpc.RecsysPredictorStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def rank(self, request: pb.RankRequest, timeout: float | None = None) -> pb.RankResponse:
        return self.stub.Rank(request, timeout=timeout or self.timeout)

    def predict(self, request: xpb.PredictNextActionsRequest, timeout: float | None = None,
                **kwargs) -> xpb.PredictNextActionsResponse:  # fmt: skip
        """xAI's PredictNextActions (`kwargs`: gRPC's, e.g. metadata, compression)."""
        return self.xai.PredictNextActions(request, timeout=timeout or self.timeout, **kwargs)

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
