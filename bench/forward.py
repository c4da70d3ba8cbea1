"""Forward-pass throughput of a checkpoint on this machine's JAX backend.

    python bench/forward.py [--checkpoint PATH] [--shapes 1x32,32x32,1x1024,4x1024] [--seconds 3]

For each batch shape ROWSxCANDIDATES (full history), prints the median time of one jitted call
and the candidates scored per second (real candidates: every slot is filled). Compare figures
only within one run: this machine is shared and its speed varies.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

from model import load_checkpoint, make_forward
from model.checkpoint import default_checkpoint_path
from request.layout import empty_batch


def filled_batch(config, rows: int, candidates: int, seed: int = 0):
    """A batch whose every history and candidate slot is real (full history)."""
    batch = empty_batch(config, rows, config.history_seq_len, candidates)
    return fill(batch, np.random.default_rng(seed), config.product_surface_vocab_size)


def fill(batch, rng: np.random.Generator, surfaces: int):
    """Every slot of a batch real: nonzero table rows (below 1,000, within every table),
    surfaces below the vocabulary, about 10% of actions taken."""

    def column(name: str, a: np.ndarray) -> np.ndarray:
        if a.dtype == np.uint8:
            return (rng.random(a.shape) < 0.1).astype(np.uint8)
        high = surfaces if name.endswith("surface") else 1000
        return rng.integers(1, high, size=a.shape).astype(a.dtype)

    return type(batch)(*(column(name, a) for name, a in zip(batch._fields, batch, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--shapes", default="1x32,32x32,1x1024,4x1024")
    parser.add_argument("--seconds", type=float, default=3.0, help="per shape")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint or default_checkpoint_path())
    config = ckpt.config
    forward = jax.jit(make_forward(config, ckpt.rows, args.dtype).apply)
    params = jax.device_put(ckpt.state.params)
    print(json.dumps({"model": ckpt.info.model_version, "backend": jax.default_backend(),
                      "device": str(jax.devices()[0]), "machine": platform.machine(),
                      "cpus": __import__("os").cpu_count(), "emb_size": config.emb_size,
                      "layers": config.model.num_layers, "history": config.history_seq_len}))  # fmt: skip
    for spec in args.shapes.split(","):
        rows, candidates = (int(x) for x in spec.split("x"))
        batch = jax.device_put(filled_batch(config, rows, candidates))
        forward(params, batch).block_until_ready()  # compile
        times, deadline = [], time.perf_counter() + args.seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            forward(params, batch).block_until_ready()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(json.dumps({"rows": rows, "candidates_per_row": candidates, "calls": len(times),
                          "median_ms": round(median * 1e3, 3),
                          "candidates_per_s": round(rows * candidates / median)}))  # fmt: skip


if __name__ == "__main__":
    main()
