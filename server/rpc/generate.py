"""Regenerate the Python stubs from the proto: `python -m server.rpc.generate [OUT_DIR]`.

The proto lives at `proto/phoenix/ranking/v1/ranking.proto` (shared with the Rust client); it
is mapped to the virtual path `server/rpc/ranking.proto` so that the generated modules import
each other as `server.rpc.*` without any post-processing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "phoenix" / "ranking" / "v1" / "ranking.proto"


def generate(out_dir: Path = ROOT) -> None:
    """Write server/rpc/ranking_pb2{,_grpc}.py(i) under `out_dir`."""
    args = [
        "protoc",
        f"-Iserver/rpc={PROTO.parent}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ]
    (Path(out_dir) / "server" / "rpc").mkdir(parents=True, exist_ok=True)
    if protoc.main([*args, str(PROTO)]) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
