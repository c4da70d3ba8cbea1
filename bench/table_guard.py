"""What guarding a mapped table against its file changing costs a host gather.

    python bench/table_guard.py [--rows 1000000] [--width 64] [--gathers 200]

A table of `--rows` x `--width` float32 in a file, mapped; each gather reads the unique rows
one batch names (2,048: a batch of small requests; 11,264: a 2,800-candidate request's post
and author rows at 2 hashes each), the pages cached (what serving reaches after warm-up).
Ways of reading them, microseconds a gather (median of `--gathers`):

  mapping        numpy's fancy index on the mapping, unguarded (what a truncation faults)
  lease          the same inside `server.engine.mapped_file.MappedFile.reading()` with a read lease
                 (a lock; the kernel signals a writer)
  stat           the same inside `reading()` without a lease: one fstat before each gather
  pread          each row read with os.preadv into the gathered array instead of through the
                 mapping (a truncated file reads short; it cannot fault)

Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from server import mapped_file  # noqa: E402
from server.engine.mapped_file import MappedFile  # noqa: E402


def timed(fn, gathers: int) -> float:
    samples = []
    for _ in range(gathers):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return round(1e6 * statistics.median(samples), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--gathers", type=int, default=200)
    args = parser.parse_args()
    mapped_file.install_lease_handler()
    row_bytes = 4 * args.width
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.bin"
        np.random.default_rng(0).standard_normal((args.rows, args.width), np.float32).tofile(path)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        table = np.frombuffer(mm, np.float32).reshape(args.rows, args.width)
        np.asarray(table).sum()  # the pages cached and mapped
        leased = MappedFile(str(path))
        mapped_file._handler_installed, installed = False, mapped_file._handler_installed
        stat_only = MappedFile(str(path))
        mapped_file._handler_installed = installed
        fd = os.open(path, os.O_RDONLY)
        rng = np.random.default_rng(1)
        for count in (2048, 11264):
            rows = np.unique(rng.integers(0, args.rows, count))

            def mapping(rows=rows):
                return table[rows]

            def guarded(file, rows=rows):
                with file.reading():
                    return table[rows]

            def pread(rows=rows):
                out = np.empty((len(rows), args.width), np.float32)
                view = memoryview(out).cast("B")
                for i, r in enumerate(rows.tolist()):
                    os.preadv(fd, [view[i * row_bytes : (i + 1) * row_bytes]], r * row_bytes)
                return out

            assert np.array_equal(pread(), mapping())
            print(json.dumps({
                "rows_gathered": len(rows), "table_rows": args.rows, "width": args.width,
                "lease_taken": leased.leased,
                "us_per_gather": {
                    "mapping": timed(mapping, args.gathers),
                    "lease": timed(lambda: guarded(leased), args.gathers),
                    "stat": timed(lambda: guarded(stat_only), args.gathers),
                    "pread": timed(pread, args.gathers),
                },
            }), flush=True)  # fmt: skip
        os.close(fd)
        leased.close()
        stat_only.close()


if __name__ == "__main__":
    main()
