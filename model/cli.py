"""Checkpoint sub-commands of `phoenix-ranker`: import and export of the exchange format,
random checkpoints of any size (`init`) and table conversion (`quantize`).

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

    from model.tables import TABLE_DTYPES

    p = sub.add_parser("init", help="a randomly initialised checkpoint of any size (streamed)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    p.add_argument(
        "--preset",
        default="default",
        choices=("default", "nano"),
        help="the model's shape: the embedded default model's, or xAI's nano",
    )
    for table in ("user", "post", "author"):
        p.add_argument(
            f"--{table}-rows", type=int, help=f"{table} table rows (default: the preset's)"
        )
    p.add_argument("--table-dtype", default="float32", choices=TABLE_DTYPES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-version", help="version string to record (default: random-SEED)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("quantize", help="a checkpoint's tables in another dtype (streamed)")
    p.add_argument("source", type=Path, help="checkpoint to read (verified first)")
    p.add_argument("out", type=Path, help="checkpoint to write")
    p.add_argument("--table-dtype", required=True, choices=TABLE_DTYPES)
    p.add_argument("--model-version", help="version to record (default: the source's + dtype)")
    p.set_defaults(func=cmd_quantize)


def cmd_import(args) -> int:
    from model.exchange import import_exchange

    info = import_exchange(args.params, args.config, args.out, args.model_version)
    print(f"wrote {args.out} (model_version={info.model_version}, sha256={info.file_sha256})")
    return 0


def cmd_init(args) -> int:
    from model.generate import init_checkpoint, preset
    from model.tables import describe_tables

    config, rows = preset(args.preset)
    rows = rows._replace(**{t: getattr(args, f"{t}_rows") for t in rows._fields
                            if getattr(args, f"{t}_rows") is not None})  # fmt: skip
    print(describe_tables(rows, config.emb_size, args.table_dtype), flush=True)
    info = init_checkpoint(args.out, config, rows, args.table_dtype, args.seed, args.model_version)
    print(f"wrote {args.out} (model_version={info.model_version}, "
          f"content_sha256={info.content_sha256})")  # fmt: skip
    return 0


def cmd_quantize(args) -> int:
    from model.generate import quantize_checkpoint

    info = quantize_checkpoint(args.source, args.out, args.table_dtype, args.model_version)
    print(f"wrote {args.out} (model_version={info.model_version}, "
          f"content_sha256={info.content_sha256})")  # fmt: skip
    return 0


def cmd_export(args) -> int:
    from model.exchange import export_exchange

    export_exchange(args.checkpoint, args.params, args.config)
    print(f"wrote {args.params} and {args.config}")
    return 0
