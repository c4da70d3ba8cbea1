"""Regenerate the Python stubs from the protos: `python -m server.rpc.generate [OUT_DIR]`.

The protos live under `proto/` (shared with the Rust client): ours,
`proto/phoenix/ranking/v1/ranking.proto`, and our subset of xAI's,
`proto/xai/recsys/v1/recsys.proto`. Each is mapped to a virtual path under `server/rpc/` so
that the generated modules import each other as `server.rpc.*` without any post-processing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = (
    ROOT / "proto" / "phoenix" / "ranking" / "v1" / "ranking.proto",
    ROOT / "proto" / "xai" / "recsys" / "v1" / "recsys.proto",
)
# The files generate() writes under server/rpc/, one set per proto.
OUTPUTS = tuple(f"{p.stem}{suffix}" for p in PROTOS
                for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))  # fmt: skip


def generate(out_dir: Path = ROOT) -> None:
    """Write server/rpc/<name>_pb2{,_grpc}.py(i) under `out_dir` for every proto."""
    (Path(out_dir) / "server" / "rpc").mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        args = [
            "protoc",
            f"-Iserver/rpc={proto.parent}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
        ]
        if protoc.main([*args, str(proto)]) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
