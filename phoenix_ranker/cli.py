"""`phoenix-ranker`: the product's one command line, each package's commands together.

serve / rank / health       the server and its client (`server.cli`)
import / export / init ...  checkpoints and interop (`model.cli`)
train / eval / demo         the synthetic world and the default model (`training.cli`)
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from model import cli as model_cli
from server import cli as server_cli
from training import cli as training_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phoenix-ranker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_cli.add_commands(sub)
    model_cli.add_commands(sub)
    training_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from model.errors import CheckpointError  # light: no JAX

    try:
        args = build_parser().parse_args(argv)
    except ValueError as e:  # a malformed PHOENIX_* variable
        print(f"phoenix-ranker: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # `phoenix-ranker rank | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CheckpointError, ValueError) as e:
        print(f"phoenix-ranker {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"phoenix-ranker {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
