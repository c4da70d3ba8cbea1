"""`phoenix-ranker`: the service's one command line.

serve    run the gRPC ranking server (flags also settable as PHOENIX_* variables)
rank     send a request to a running server and print the ranked candidates
health   exit 0 only if a server's standard health service reports SERVING
import / export / train / eval / demo   offline model commands (see model/cli.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import grpc

from model import cli as model_cli


def _env(name: str, default, cast=str):
    """Default of flag --name from PHOENIX_NAME, else `default`."""
    value = os.environ.get("PHOENIX_" + name.upper().replace("-", "_"))
    return default if value is None else cast(value)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC ranking server",
        description="Run the ranking server. Every flag can also be set by an environment "
        "variable: --max-batch-size <=> PHOENIX_MAX_BATCH_SIZE, and so on.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flag = p.add_argument
    flag("--host", default=_env("host", "[::]"), help="interface to bind (PHOENIX_HOST)")
    flag(
        "--port",
        type=int,
        default=_env("port", 50051, int),
        help="gRPC port, 0 = any free (PHOENIX_PORT)",
    )
    flag(
        "--metrics-port",
        type=int,
        default=_env("metrics_port", 9090, int),
        help="Prometheus /metrics port, 0 = any free (PHOENIX_METRICS_PORT)",
    )
    flag(
        "--checkpoint",
        type=Path,
        default=_env("checkpoint", None, Path),
        help="checkpoint to serve; default: the embedded default model (PHOENIX_CHECKPOINT)",
    )
    flag(
        "--max-batch-size",
        type=int,
        default=_env("max_batch_size", 32, int),
        help="most rows (request windows) per batch (PHOENIX_MAX_BATCH_SIZE)",
    )
    flag(
        "--max-batch-wait-ms",
        type=float,
        default=_env("max_batch_wait_ms", 2.0, float),
        help="how long a batch waits for more requests (PHOENIX_MAX_BATCH_WAIT_MS)",
    )
    flag(
        "--max-queue",
        type=int,
        default=_env("max_queue", 256, int),
        help="queued requests before RESOURCE_EXHAUSTED (PHOENIX_MAX_QUEUE)",
    )
    flag(
        "--grace-seconds",
        type=float,
        default=_env("grace_seconds", 10.0, float),
        help="time queued and in-flight requests get on SIGTERM (PHOENIX_GRACE_SECONDS)",
    )
    flag(
        "--max-candidates-per-request",
        type=int,
        default=_env("max_candidates_per_request", 2800, int),
        help="larger requests get INVALID_ARGUMENT (PHOENIX_MAX_CANDIDATES_PER_REQUEST)",
    )
    flag(
        "--max-history-events",
        type=int,
        default=_env("max_history_events", 4096, int),
        help="larger histories get INVALID_ARGUMENT (PHOENIX_MAX_HISTORY_EVENTS)",
    )
    flag(
        "--max-request-bytes",
        type=int,
        default=_env("max_request_bytes", 4 * 2**20, int),
        help="larger messages get INVALID_ARGUMENT (PHOENIX_MAX_REQUEST_BYTES)",
    )
    flag(
        "--candidate-buckets",
        type=_ints,
        default=_env("candidate_buckets", (16, 64, 256, 1024), _ints),
        help="candidate slots per row that are compiled; the largest is the window a request "
        "is split into (PHOENIX_CANDIDATE_BUCKETS)",
    )
    flag(
        "--history-buckets",
        type=_ints,
        default=_env("history_buckets", None, _ints),
        help="history slots that are compiled; default S/4,S (PHOENIX_HISTORY_BUCKETS)",
    )
    flag(
        "--max-batch-candidates",
        type=int,
        default=_env("max_batch_candidates", None, int),
        help="most candidate slots (rows x window) per batch; default 4x the largest "
        "candidate bucket (PHOENIX_MAX_BATCH_CANDIDATES)",
    )
    flag(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=_env("dtype", None),
        help="forward dtype; default bfloat16 on GPU/TPU, float32 on CPU (PHOENIX_DTYPE)",
    )
    flag(
        "--compilation-cache",
        default=_env("compilation_cache", None),
        help="directory for JAX's persistent compilation cache: restarts skip most "
        "compilation (PHOENIX_COMPILATION_CACHE)",
    )
    flag(
        "--log-level",
        default=_env("log_level", "info"),
        help="debug logs one line per request (PHOENIX_LOG_LEVEL)",
    )
    flag(
        "--log-json",
        action="store_true",
        default=_env("log_json", False, _truthy),
        help="JSON-lines logs (PHOENIX_LOG_JSON=1)",
    )
    p.set_defaults(func=cmd_serve)  # fmt: skip


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def cmd_serve(args) -> int:
    from server import logs
    from server.app import ServerConfig, serve
    from server.convert import Limits

    logs.configure(args.log_level, args.log_json)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        checkpoint=args.checkpoint,
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_queue=args.max_queue,
        grace_seconds=args.grace_seconds,
        candidate_buckets=args.candidate_buckets,
        history_buckets=args.history_buckets,
        max_batch_candidates=args.max_batch_candidates,
        limits=Limits(
            args.max_candidates_per_request, args.max_history_events, args.max_request_bytes
        ),
        compute_dtype=args.dtype,
        compilation_cache=args.compilation_cache,
    )
    return asyncio.run(serve(config))


def _add_client_commands(sub) -> None:
    p = sub.add_parser("rank", help="rank a request with a running server and print the table")
    p.add_argument("--target", default=_env("target", "localhost:50051"), help="host:port")
    p.add_argument("--request", type=Path, help="request JSON (the parity fixture's layout); "
                   "default: a synthetic user")  # fmt: skip
    p.add_argument("--seed", type=int, default=7, help="synthetic user and candidates")
    p.add_argument("--candidates", type=int, default=12, help="synthetic candidates")
    p.add_argument("--weights", default="", help="override weights, e.g. 'favorite=1,report=-100'")
    p.add_argument("--top", type=int, default=None, help="print only the best N")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print the raw response as JSON")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("health", help="exit 0 only if the server reports SERVING")
    p.add_argument("--target", default=_env("target", "localhost:50051"), help="host:port")
    p.add_argument("--service", default="", help="service name; default: the whole server")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=cmd_health)


def cmd_rank(args) -> int:
    from google.protobuf import json_format

    from model.checkpoint import default_checkpoint_path
    from model.features import RawRequest
    from model.scoring import format_ranking, parse_weights
    from server.client import RankingClient
    from server.convert import probabilities_from_pb, raw_request_to_pb

    with RankingClient(args.target, timeout=args.timeout) as client:
        info = client.model_info()
        if args.request:
            raw = RawRequest.from_dict(json.loads(args.request.read_text()))
        else:
            sample = model_cli.synthetic_sample(
                default_checkpoint_path(), info.history_seq_len, args.candidates, args.seed
            )
            raw = sample.request(0)
        response = client.rank(raw_request_to_pb(raw))
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    probabilities = probabilities_from_pb(response, len(info.actions))
    print(f"{args.target} model {response.model_version}: {raw.num_candidates} candidates, "
          f"{raw.num_history} history events, request_id {response.request_id}")  # fmt: skip
    print(format_ranking(raw.candidate_post_ids, raw.candidate_author_ids, probabilities,
                         actions=list(info.actions), weights=parse_weights(args.weights), top=args.top))  # fmt: skip
    return 0


def cmd_health(args) -> int:
    from server.client import RankingClient

    try:
        with RankingClient(args.target) as client:
            status = client.health(args.service, timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phoenix-ranker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_client_commands(sub)
    model_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from model.errors import CheckpointError  # light: no JAX

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ValueError) as e:
        print(f"phoenix-ranker {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"phoenix-ranker {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
