"""Served throughput and latency: the real server under the Rust closed-loop load generator.

    python bench/serve.py [--duration 10] [--concurrency 1,32] [--candidates 32,512]
                          [--modes batching,no-batching] [--checkpoint PATH]

For each server mode (batching: the default flags; no-batching: `--max-batch-size 1`), starts
`phoenix-ranker serve` on free ports, then for each request size and concurrency runs
`clients/rust` `loadgen` (built in release mode) and prints one JSON line per run plus a table.
The load generator shares the machine's cores with the server: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server.harness import ServerProcess  # noqa: E402

MODES = {"batching": (), "no-batching": ("--max-batch-size", "1")}


def loadgen() -> Path:
    crate = ROOT / "clients" / "rust"
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "loadgen"], cwd=crate,
                   check=True, capture_output=True)  # fmt: skip
    return crate / "target" / "release" / "loadgen"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--candidates", default="32,512")
    parser.add_argument("--history", type=int, default=64)
    parser.add_argument("--modes", default="batching,no-batching")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--server-args", default="", help="extra serve flags, space separated")
    args = parser.parse_args()

    binary = loadgen()
    print(
        json.dumps(
            {
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )
    rows = []
    cache = {"PHOENIX_COMPILATION_CACHE": str(ROOT / ".bench-jax-cache")}
    for mode in args.modes.split(","):
        flags = [*MODES[mode], *args.server_args.split()]
        if args.checkpoint:
            flags += ["--checkpoint", args.checkpoint]
        with ServerProcess(*flags, env=cache) as server:
            for candidates in (int(c) for c in args.candidates.split(",")):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    out = subprocess.run(
                        [str(binary), "--target", f"http://{server.target}",
                         "--concurrency", str(concurrency), "--duration-secs", str(args.duration),
                         "--warmup-secs", "5", "--history", str(args.history),
                         "--candidates", str(candidates)],
                        check=True, capture_output=True, text=True,
                    ).stdout  # fmt: skip
                    report = json.loads(out) | {"mode": mode}
                    print(json.dumps(report), flush=True)
                    rows.append(report)
            m = server.metrics()
            batches = m["phoenix_batch_size_count"]
            print(json.dumps({"mode": mode, "batches": batches,
                              "mean_requests_per_batch": m["phoenix_batch_size_sum"] / max(batches, 1),
                              "compilations": m["phoenix_compilations_total"]}))  # fmt: skip

    print()
    print(
        f"{'mode':<12}{'cands/req':>10}{'clients':>8}{'req/s':>9}{'cands/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    for r in rows:
        lat = r["latency_ms"]
        print(f"{r['mode']:<12}{r['candidates']:>10}{r['concurrency']:>8}{r['requests_per_s']:>9.0f}"
              f"{r['candidates_per_s']:>10.0f}{lat['p50']:>9.2f}{lat['p99']:>9.2f}{sum(r['errors'].values()):>8}")  # fmt: skip


if __name__ == "__main__":
    main()
