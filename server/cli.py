"""The server's commands of `phoenix-ranker` (`phoenix_ranker.cli`):

serve    run the gRPC ranking server (flags also settable as PHOENIX_* variables)
rank     send a request to a running server and print the ranked candidates
health   exit 0 only if a server's standard health service reports SERVING
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc

from server.flags import ENV_PREFIX, add_flags, config_from_args


def _env(name: str, default: str) -> str:
    """Default of a client flag from PHOENIX_NAME."""
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC ranking server",
        description="Run the ranking server. Every flag can also be set by its environment "
        "variable (--max-batch-size <=> PHOENIX_MAX_BATCH_SIZE); a flag wins over its variable. "
        "An empty value means the documented automatic choice.",
    )
    add_flags(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from server.app import serve
    from server.operations import logs

    config = config_from_args(args)
    logs.configure(config.log_level, config.log_json)
    return asyncio.run(serve(config))


def _add_connection(p) -> None:
    """--target and the TLS options of a client command."""
    p.add_argument("--target", default=_env("target", "localhost:50051"),
                   help="host:port, http://host:port, or https://host:port (TLS) (PHOENIX_TARGET)")  # fmt: skip
    p.add_argument("--tls-ca", type=Path, default=_env("tls_ca", "") or None,
                   help="PEM CA that signed the server's certificate; implies TLS "
                   "(PHOENIX_TLS_CA; https:// without it: the system roots)")  # fmt: skip
    p.add_argument("--tls-cert", type=Path, default=_env("tls_client_cert", "") or None,
                   help="PEM client certificate, for mutual TLS (PHOENIX_TLS_CLIENT_CERT)")  # fmt: skip
    p.add_argument("--tls-key", type=Path, default=_env("tls_client_key", "") or None,
                   help="PEM key of --tls-cert (PHOENIX_TLS_CLIENT_KEY)")  # fmt: skip
    p.add_argument("--tls-server-name", default=None,
                   help="name to verify the server's certificate against; default: the host")  # fmt: skip


def _client(args, timeout: float):
    from server.client import ClientTLS, RankingClient

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return RankingClient(args.target, timeout=timeout, tls=tls)


def _add_client_commands(sub) -> None:
    p = sub.add_parser("rank", help="rank a request with a running server and print the table")
    _add_connection(p)
    p.add_argument("--request", type=Path, help="request JSON file: ours (README, "
                   "request/request.schema.json, examples/request.json), or xAI's "
                   "PredictNextActionsRequest in protobuf's JSON mapping, told apart by its "
                   "candidateSets and sent to PredictNextActions (examples/xai-*.json, "
                   "docs/xai-compat.md); default: a synthetic user")  # fmt: skip
    p.add_argument("--seed", type=int, default=7, help="synthetic user and candidates "
                   "(the Rust client's `rank --seed` sends the same request)")  # fmt: skip
    p.add_argument("--candidates", type=int, default=12, help="synthetic candidates")
    p.add_argument("--history", type=int, default=None,
                   help="synthetic history events; default: the model's history_seq_len")  # fmt: skip
    p.add_argument("--weights", default="", help="override weights, e.g. 'favorite=1,report=-100'")
    p.add_argument("--top", type=int, default=None, help="print only the best N")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print the raw response as JSON")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("health", help="exit 0 only if the server reports SERVING")
    _add_connection(p)
    p.add_argument("--service", default="", help="service name; default: the whole server")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=cmd_health)


def cmd_rank(args) -> int:
    from google.protobuf import json_format

    from model.scoring import format_ranking, parse_weights
    from request.raw import RawRequest, read_json_file
    from request.synthetic import synthetic_request_dict
    from server.contracts.convert import probabilities_from_pb, raw_request_to_pb

    data = read_json_file(args.request) if args.request else None
    if isinstance(data, dict) and "candidateSets" in data:
        return _rank_xai(args, data)
    raw = RawRequest.from_dict(data) if args.request else None
    with _client(args, args.timeout) as client:
        info = client.model_info()
        if raw is None:
            history = info.history_seq_len if args.history is None else args.history
            raw = RawRequest.from_dict(
                synthetic_request_dict(
                    args.seed, history, args.candidates, info.product_surface_vocab_size
                )
            )
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


def _rank_xai(args, data: dict) -> int:
    """`rank` of an xAI PredictNextActionsRequest (`data`, protobuf's JSON mapping; fields
    outside our subset are ignored, as the server ignores them): one table per candidate set,
    each candidate's probabilities of the actions its answer carries."""
    import numpy as np
    from google.protobuf import json_format

    from model.scoring import format_ranking, parse_weights
    from request.actions import ACTIONS
    from server.contracts.xai import distribution_probabilities, response_mode
    from server.rpc import recsys_pb2 as xpb

    request = xpb.PredictNextActionsRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise ValueError(f"{args.request}: not a PredictNextActionsRequest: {e}") from None
    with _client(args, args.timeout) as client:
        response = client.predict(request)
    if args.json:
        print(json_format.MessageToJson(response))
        return 0
    weights = parse_weights(args.weights)
    for dist_set in response.distributionSets:
        dists = dist_set.candidateDistributions
        probabilities = np.array([distribution_probabilities(d, request.requestedActionIndices)
                                  for d in dists]).reshape(len(dists), len(ACTIONS))  # fmt: skip
        carried = ~np.isnan(probabilities).any(axis=0)  # the actions every answer holds
        actions = [a for a, kept in zip(ACTIONS, carried, strict=True) if kept]
        columns = [c for c in ("favorite", "reply", "repost", "click", "not_interested",
                               "report") if c in actions] or actions[:6]  # fmt: skip
        print(f"{args.target} model {dist_set.checkpointPath}: user {dist_set.userId}, "
              f"{len(dists)} candidates, {response_mode(request)}, "
              f"{len(actions)} of {len(ACTIONS)} actions returned")  # fmt: skip
        print(format_ranking([d.candidate.tweetId for d in dists],
                             [d.candidate.authorId for d in dists], probabilities[:, carried],
                             actions=actions, weights=weights, columns=columns, top=args.top))  # fmt: skip
    return 0


def cmd_health(args) -> int:
    try:
        with _client(args, args.timeout) as client:
            status = client.health(args.service, timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


def add_commands(sub) -> None:
    """serve, rank and health, into the product's command line (`phoenix_ranker.cli`)."""
    _add_serve(sub)
    _add_client_commands(sub)
