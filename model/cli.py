"""Checkpoint sub-commands of `phoenix-ranker`: import and export of the exchange format.

Flags are parsed here and nowhere else; the library functions take typed arguments. Heavy
modules are imported inside the commands so that `phoenix-ranker health` starts fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="exchange .npz + config JSON -> checkpoint")
    p.add_argument("--params", required=True, type=Path, help="exchange .npz (flat names)")
    p.add_argument("--config", required=True, type=Path, help="config JSON (interop fields)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    p.add_argument("--model-version", help="version string to record (default: from file name)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="checkpoint -> exchange .npz + config JSON (bit-exact)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--params", required=True, type=Path, help=".npz to write")
    p.add_argument("--config", required=True, type=Path, help="config JSON to write")
    p.set_defaults(func=cmd_export)


def cmd_import(args) -> int:
    from model.exchange import import_exchange

    info = import_exchange(args.params, args.config, args.out, args.model_version)
    print(f"wrote {args.out} (model_version={info.model_version}, sha256={info.file_sha256})")
    return 0


def cmd_export(args) -> int:
    from model.exchange import export_exchange

    export_exchange(args.checkpoint, args.params, args.config)
    print(f"wrote {args.params} and {args.config}")
    return 0
