"""The engine at production scale: one command, a JSON report and BENCHMARKS.md.

    .venv/bin/python bench/engine.py [--smoke] [--out bench/results-engine.json]
                                     [--markdown BENCHMARKS.md] [--skip peer,warmup,...]

Sections (all in one run, on one machine; every ratio below is between figures of that run):
  machine   CPU model, cores, JAX devices, library versions, and the matmul peak: the best
            GFLOP/s of a jitted float32 2048 x 2048 matmul on this backend
  forward   the bare jitted calls the server makes, per shape, for the default and the
            nano-sized model: prefix calls [R, S] and chunk calls [B, S, C]; candidates/s,
            FLOPs (XLA's cost analysis of the compiled call) and FLOP utilisation
  profile   the largest nano chunk call with and without its attention: where the time goes
  one_user  1 user x {256, 1,024, 2,800} candidates at history {128, 512, 1,022}, nano-sized:
              prefix_once   this server's runner (model.prefix), batches composed as the
                            batcher composes them, prefix cache off
              windows       the previous engine: the one-pass forward over windows from
                            buckets (16, 64, 256, 1,024), history re-encoded in each window
              ref_windows   the reference's layout: windows of 64 (candidate_seq_len), the
                            history re-encoded in each, its dense [T, T] masked attention
              dense_row     xAI's engine layout: one row holding every candidate under the
                            dense [T, T] mask
            (seconds per request, median; logits of every path checked against prefix_once)
  cache     prefix-cache hit vs miss for 64 and 512 candidates at history 1,022 (nano)
  warmup    `phoenix-ranker serve` start to SERVING and to every shape compiled, with an
            empty and with a populated compilation cache, default and nano-sized model
  peer      bench/peer_triton.py (NVIDIA Triton's dynamic batcher, same model, same ghz load)

The nano-sized model (emb 512, 4 layers, 4 query / 2 key-value heads, key 128, widening 2,
history 1,022, xAI's "nano" preset) has random weights written in the exchange format and
imported with `phoenix-ranker import`, as a reference-trained checkpoint would be. `--smoke`
runs every section except the peer on tiny sizes in seconds (CI runs it so it cannot rot).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.forward import fill  # noqa: E402

# Where bench/tables.py's section of the markdown begins: kept as it is by this report.
TABLES_MARKER = "<!-- bench/tables.py: everything below is its output -->"
from model import load_checkpoint, make_forward  # noqa: E402
from model.checkpoint import default_checkpoint_path  # noqa: E402
from model.config import NANO, NANO_TABLE_ROWS, PhoenixModelConfig  # noqa: E402
from model.params import flatten  # noqa: E402
from model.prefix import empty_slab, score_chunks  # noqa: E402
from request.columns import SCHEMA  # noqa: E402
from request.encoding import encode  # noqa: E402
from request.layout import Piece, empty_batch, pack_rows, windows  # noqa: E402
from request.raw import RawRequest  # noqa: E402
from request.synthetic import synthetic_request_dict  # noqa: E402
from server.config import ServerConfig, ShapeConfig  # noqa: E402
from server.engine.runner import ModelRunner  # noqa: E402
from server.scheduling.buckets import make_plan  # noqa: E402
from server.scheduling.composition import next_batch_size  # noqa: E402
from tests.server.harness import ServerProcess  # noqa: E402

CANDIDATE_BUCKETS = ShapeConfig().candidate_buckets  # the server's defaults
PREVIOUS_BUCKETS = (16, 64, 256, 1024)  # the one-pass engine's defaults before model.prefix


def synthetic_request(seed: int, history: int, candidates: int) -> RawRequest:
    return RawRequest.from_dict(synthetic_request_dict(seed, history, candidates, 16))


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def timed(fn, repeats: int) -> float:
    """Median wall seconds of fn() (blocking on its result), after one untimed call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_gflops(n: int, repeats: int) -> float:
    """Best GFLOP/s of a jitted float32 n x n matmul (the yardstick for utilisation)."""
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = min(_once(f, a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _once(f, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - start


def machine(smoke: bool) -> dict:
    versions = {p: importlib.metadata.version(p)
                for p in ("jax", "jaxlib", "dm-haiku", "numpy", "grpcio", "protobuf")}  # fmt: skip
    return {
        "section": "machine", "cpu": cpu_model(), "cores": os.cpu_count(),
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(), "versions": versions,
        "matmul_peak_gflops": round(matmul_peak_gflops(512 if smoke else 2048, 5 if smoke else 20), 1),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


# -- the nano-sized checkpoint, through the import command ------------------------------------


def nano_checkpoint(workdir: Path, smoke: bool) -> Path:
    """Random weights of the nano preset (smoke: a small model of the same shape family),
    written as an exchange pair and imported with `phoenix-ranker import`."""
    config = json.loads(json.dumps(NANO))
    rows = NANO_TABLE_ROWS._asdict()
    if smoke:
        config["model"].update(emb_size=64, key_size=16, num_layers=2)
        config.update(emb_size=64, history_seq_len=64)
        rows = {"user": 1031, "post": 4099, "author": 1031}
    cfg = PhoenixModelConfig.from_dict(config)
    from request.hashing import TableRows

    forward = make_forward(cfg, TableRows(**rows), jnp.float32)
    params = forward.init(jax.random.PRNGKey(0), empty_batch(cfg, 1, cfg.history_seq_len, 8))
    npz, cfg_path, out = workdir / "nano.npz", workdir / "nano.json", workdir / "nano.safetensors"
    np.savez(npz, **{k: np.asarray(v) for k, v in flatten(params).items()})
    cfg_path.write_text(json.dumps(config))
    subprocess.run(
        [sys.executable, "-m", "phoenix_ranker", "import", "--params", str(npz), "--config",
         str(cfg_path), "--out", str(out), "--model-version", "nano-random"],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return out


# -- forward: the calls the server makes ------------------------------------------------------


def runner_config(max_batch_size: int, cache_bytes: int,
                  buckets: tuple[int, ...] = CANDIDATE_BUCKETS) -> ServerConfig:  # fmt: skip
    """The server's settings for the runners below: the benchmark's buckets, a prefix cache."""
    shapes = ShapeConfig(max_batch_size=max_batch_size, candidate_buckets=buckets)
    return ServerConfig(shapes=shapes, prefix_cache_bytes=cache_bytes)


def forward_section(name: str, ckpt, peak: float, shapes, repeats: int) -> list[dict]:
    """Each shape's call alone: seconds, candidates/s (chunk calls), FLOPs and utilisation."""
    c = ckpt.config
    runner = ModelRunner(ckpt, runner_config(max(s[0] for s in shapes), cache_bytes=0))
    plan = runner.full_plan
    out = []
    for shape in shapes:
        shape = type(plan.shapes()[0])(*shape)
        executable = runner.engine.executable(shape)
        cost = executable.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0))
        slab = runner.engine._slabs[shape.history]
        rng = np.random.default_rng(0)
        if shape.is_prefix:
            batch = fill(
                empty_batch(c, shape.rows, shape.history, 0), rng, c.product_surface_vocab_size
            )
            inputs = SCHEMA.split(batch)[0]
            slots = np.arange(shape.rows, dtype=np.int32)
            state = {"slab": slab}

            def call(state=state, executable=executable, inputs=inputs, slots=slots):
                state["slab"] = executable(runner.model.params, state["slab"], inputs, slots)
                return state["slab"]

            seconds = timed(call, repeats)
            runner.engine._slabs[shape.history] = state["slab"]
        else:
            batch = fill(
                empty_batch(c, shape.rows, 0, shape.candidates), rng, c.product_surface_vocab_size
            )
            chunks = SCHEMA.split(batch)[1]
            slots = np.zeros(shape.rows, np.int32)
            seconds = timed(lambda e=executable, ch=chunks, s=slots, b=slab: e(runner.model.params, b, ch, s),
                            repeats)  # fmt: skip
        record = {
            "section": "forward", "model": name, "call": "prefix" if shape.is_prefix else "chunk",
            "rows": shape.rows, "history": shape.history, "candidates": shape.candidates,
            "ms": round(seconds * 1e3, 3), "gflop": round(flops / 1e9, 3),
            "utilisation": round(flops / seconds / 1e9 / peak, 3),
        }  # fmt: skip
        if not shape.is_prefix:
            record["candidates_per_s"] = round(shape.rows * shape.candidates / seconds)
        out.append(emit(record))
    return out


def profile_section(ckpt, peak: float, rows: int, size: int, repeats: int) -> dict:
    """Where a chunk call's time goes: the call, and the same call with its attention
    replaced by a stand-in of the same shape (so: projections, feed-forward, embeddings and
    unembedding alone). The difference is the attention: its two products, and the elementwise
    passes over its [G, Q, C, P] weights (clamp, exp, mask, sum)."""
    import model.prefix as prefix_module

    c = ckpt.config
    params = jax.device_put(ckpt.state.params)
    slab = empty_slab(c, 1, c.history_seq_len, jnp.float32)
    chunks = SCHEMA.split(
        fill(empty_batch(c, rows, 0, size), np.random.default_rng(0), c.product_surface_vocab_size)
    )[1]
    slots = np.zeros(rows, np.int32)
    real = prefix_module.candidate_attention
    out = {}
    for name, attention in (("call", real), ("without_attention", lambda q, *_: q * 1.0)):
        prefix_module.candidate_attention = attention
        try:
            fn = jax.jit(lambda p, s, x, q: score_chunks(p, c, jnp.float32, s, x, q))
            compiled = fn.lower(params, slab, chunks, slots).compile()
        finally:
            prefix_module.candidate_attention = real
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        seconds = timed(lambda f=compiled: f(params, slab, chunks, slots), repeats)
        out[name] = (seconds, float(cost.get("flops", 0.0)))
    (total_s, total_f), (linear_s, linear_f) = out["call"], out["without_attention"]
    attn_s, attn_f = total_s - linear_s, total_f - linear_f
    return emit({
        "section": "profile", "rows": rows, "history": c.history_seq_len, "candidates": size,
        "call_ms": round(total_s * 1e3, 1), "linear_ms": round(linear_s * 1e3, 1),
        "attention_ms": round(attn_s * 1e3, 1),
        "linear_utilisation": round(linear_f / linear_s / 1e9 / peak, 3),
        "attention_utilisation": round(attn_f / max(attn_s, 1e-9) / 1e9 / peak, 3),
        "attention_share": round(attn_s / total_s, 3),
    })  # fmt: skip


# -- one user with many candidates: four engines ----------------------------------------------


class PrefixOnce:
    """This server's runner, batches composed by the batcher's policy."""

    def __init__(self, ckpt, cache_bytes: int = 0, buckets: tuple[int, ...] = CANDIDATE_BUCKETS):
        self.runner = ModelRunner(ckpt, runner_config(32, cache_bytes, buckets))
        self.plan = self.runner.full_plan
        self.runner.engine._ready.update(self.plan.shapes())  # compiled on first use, below
        self.runner.engine.plan = self.plan

    def warm(self, encoded) -> None:
        """Compile and run once the calls this request needs (first runs pay one-time costs)."""
        self.scores(encoded)

    def scores(self, encoded) -> np.ndarray:
        """Scores of one request, arriving now: with the cache off its prefix is encoded
        (a copy of the request is a new request, so repeats do not find the last one's)."""
        if not self.runner.packer.reuse_prefixes:
            encoded = dataclasses.replace(encoded)
        m, n = encoded.num_candidates, encoded.num_history
        pieces = [Piece(encoded, s, e) for s, e in windows(m, self.plan.window_for(m, n))]
        out = []
        while pieces:
            k = next_batch_size(((n, p.stop - p.start) for p in pieces), self.plan)
            batch, pieces = pieces[:k], pieces[k:]
            scores = self.runner.run(self.runner.pack(batch)).values
            out += [scores[r, : p.stop - p.start] for r, p in enumerate(batch)]
        return np.concatenate(out)[:, : self.runner.config.num_actions]


class OnePass:
    """The one-pass forward over windows (each window a row holding the user and history)."""

    def __init__(self, ckpt, attention: str):
        self.ckpt = ckpt
        self.apply = jax.jit(make_forward(ckpt.config, ckpt.rows, attention=attention).apply)
        self.params = jax.device_put(ckpt.state.params)

    def run(self, encoded, window: int, history: int, rows_per_call: int) -> np.ndarray:
        """Windows in calls of power-of-two rows (at most `rows_per_call`), none padding: how
        the previous batcher ran a lone request's windows (3 windows: 2 rows, then 1)."""
        spans = windows(encoded.num_candidates, window)
        out = []
        while spans:
            rows = 1 << (min(len(spans), rows_per_call).bit_length() - 1)
            part, spans = spans[:rows], spans[rows:]
            batch = pack_rows(self.ckpt.config, [Piece(encoded, s, e) for s, e in part], rows,
                              history, window)  # fmt: skip
            logits = np.asarray(self.apply(self.params, batch))
            out += [logits[r, : e - s] for r, (s, e) in enumerate(part)]
        return np.concatenate(out)


def previous_window(m: int, history: int, buckets) -> int:
    """The previous engine's window rule: fewest padded tokens, each row 1 + S + C."""
    return min(buckets, key=lambda w: -(-m // w) * (1 + history + w))


def one_user_section(ckpt, sizes, histories, repeats: int) -> list[dict]:
    c = ckpt.config
    prefix_once = PrefixOnce(ckpt)
    isolated, dense = OnePass(ckpt, "isolated"), OnePass(ckpt, "dense")
    hist_buckets = make_plan(c.history_seq_len, 32, CANDIDATE_BUCKETS).history_buckets
    out = []
    for n in histories:
        for m in sizes:
            raw = synthetic_request(7, n, m)
            encoded = encode(raw, c, ckpt.rows)
            s = min(b for b in hist_buckets if b >= encoded.num_history)
            window = previous_window(m, s, PREVIOUS_BUCKETS)
            # The previous batcher ran a request's windows in power-of-two row groups.
            per_call = max(1, 4096 // window)
            engines = {
                "prefix_once": lambda e=encoded: prefix_once.scores(e),
                "windows": lambda e=encoded, w=window, s=s, k=per_call: isolated.run(e, w, s, k),
                "ref_windows": lambda e=encoded: dense.run(e, c.candidate_seq_len,
                                                           c.history_seq_len, 8),
                "dense_row": lambda e=encoded, m=m: dense.run(e, m, c.history_seq_len, 1),
            }  # fmt: skip
            reference = np.asarray(engines["prefix_once"]())
            record = {"section": "one_user", "history": n, "candidates": m, "window": window}
            for name, fn in engines.items():
                got = np.asarray(fn())  # also the untimed first call
                err = float(np.abs(got - reference).max())
                record[f"{name}_s"] = round(timed(fn, repeats), 4)
                record[f"{name}_max_abs_diff"] = float(f"{err:.2g}")
            for name in ("windows", "ref_windows", "dense_row"):
                record[f"speedup_vs_{name}"] = round(
                    record[f"{name}_s"] / record["prefix_once_s"], 2
                )
            out.append(emit(record))
    return out


# -- prefix cache ------------------------------------------------------------------------------


def cache_section(ckpt, sizes, repeats: int) -> list[dict]:
    c = ckpt.config
    engine = PrefixOnce(ckpt, cache_bytes=1 << 30)
    out = []
    for m in sizes:
        users = iter([encode(synthetic_request(1000 + i, c.history_seq_len, m), c, ckpt.rows)
                      for i in range(repeats + 1)])  # fmt: skip

        def miss(users=users):  # a new user each time: the prefix is encoded
            return engine.scores(next(users))

        fixed = encode(synthetic_request(3, c.history_seq_len, m), c, ckpt.rows)
        first = engine.scores(fixed)
        before = engine.runner.prefix_cache_stats()
        hit_s = timed(lambda f=fixed: engine.scores(f), repeats)
        after = engine.runner.prefix_cache_stats()
        assert after.misses == before.misses, "the hits were not hits"
        np.testing.assert_array_equal(engine.scores(fixed), first)  # bit-identical
        miss_s = timed(miss, repeats)
        out.append(emit({"section": "cache", "history": c.history_seq_len, "candidates": m,
                         "miss_ms": round(miss_s * 1e3, 2), "hit_ms": round(hit_s * 1e3, 2),
                         "hit_speedup": round(miss_s / hit_s, 2)}))  # fmt: skip
    return out


# -- warm-up -----------------------------------------------------------------------------------


def startup(checkpoint: Path | None, cache_dir: Path, extra: tuple[str, ...]) -> dict:
    """Seconds from `phoenix-ranker serve` to SERVING (its log record's time) and to every
    shape compiled (when `ServerProcess` returns, at the `compiled_all` record)."""
    args = ["--compilation-cache", str(cache_dir), *extra]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    start = time.time()
    with ServerProcess(*args) as server:
        all_shapes = time.time() - start
        event = server.serving_event
    serving = datetime.datetime.fromisoformat(event["ts"]).timestamp() - start
    return {"serving_s": round(serving, 2), "shapes": event["shapes"],
            "shapes_at_serving": event["shapes_ready"], "all_shapes_s": round(all_shapes, 2)}  # fmt: skip


def warmup_section(models: dict[str, Path | None], extra: tuple[str, ...]) -> list[dict]:
    out = []
    for name, checkpoint in models.items():
        with tempfile.TemporaryDirectory(prefix="phoenix-jax-cache-") as cache:
            for state in ("cold", "cached"):
                out.append(emit({"section": "warmup", "model": name, "compilation_cache": state,
                                 **startup(checkpoint, Path(cache), extra)}))  # fmt: skip
    return out


# -- peer ----------------------------------------------------------------------------------------


def peer_section(seconds: float) -> list[dict]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "peer_triton.py"), "--seconds",
                           str(seconds)], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    records = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0:
        return [emit({"section": "peer", "error": proc.stderr[-2000:]})]
    return [emit({"section": "peer", **r}) for r in records]


# -- report --------------------------------------------------------------------------------------


def markdown(report: dict, command: str) -> str:
    m = report["machine"]
    lines = [
        "# Engine benchmarks",
        "",
        f"Generated by `{command}` on {m['date']}. One run, one machine; compare figures only "
        "within it (this machine is shared and its speed varies between runs).",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; JAX backend `{m['backend']}`, devices "
        f"{', '.join(m['devices'])}",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Matmul peak (jitted float32 2048 x 2048, best of 20): **{m['matmul_peak_gflops']} "
        "GFLOP/s**",
        "",
    ]
    if report.get("forward"):
        lines += ["## 1. The server's calls, bare", "",
                  "| model | call | rows x history x candidates | ms | candidates/s | GFLOP | "
                  "utilisation of peak |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in report["forward"]:
            lines.append(
                f"| {r['model']} | {r['call']} | {r['rows']} x {r['history']} x "
                f"{r['candidates']} | {r['ms']} | {r.get('candidates_per_s', '')} | "
                f"{r['gflop']} | {r['utilisation']:.0%} |"
            )
        lines.append("")
    if report.get("profile"):
        r = report["profile"]
        lines += ["### Where a chunk call's time goes (nano-sized model)", "",
                  f"The {r['rows']} x {r['history']} x {r['candidates']} chunk call took "
                  f"{r['call_ms']} ms; the same call with its attention replaced by a stand-in "
                  f"{r['linear_ms']} ms (projections, feed-forward, embeddings: "
                  f"{r['linear_utilisation']:.0%} of the matmul peak). Attention is "
                  f"{r['attention_share']:.0%} of the call at {r['attention_utilisation']:.0%} "
                  "of peak: its products are skinny (K = 128) and its weights take elementwise "
                  "passes (clamp, exp, mask, sum) over [G, Q, C, P] floats, bound by memory and "
                  "transcendentals rather than by FLOPs.", ""]  # fmt: skip
    if report.get("one_user"):
        lines += ["## 2. One user, many candidates (nano-sized model)", "",
                  "Seconds per request (median). `windows`: the previous engine (history "
                  "re-encoded in each window of the buckets 16/64/256/1,024); `ref_windows`: the "
                  "reference's windows of 64 with its dense mask; `dense_row`: one row of every "
                  "candidate under the dense [T, T] mask (xAI's engine's layout). Every path's "
                  "logits are checked against prefix-once (max abs diff column).", "",
                  "| history | candidates | prefix-once s | windows s | ref windows of 64 s | "
                  "dense row s | vs windows | vs ref windows | vs dense row | max abs diff |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in report["one_user"]:
            diff = max(r[f"{k}_max_abs_diff"] for k in ("windows", "ref_windows", "dense_row"))
            lines.append(
                f"| {r['history']} | {r['candidates']} | {r['prefix_once_s']} | {r['windows_s']} "
                f"| {r['ref_windows_s']} | {r['dense_row_s']} | {r['speedup_vs_windows']}x | "
                f"{r['speedup_vs_ref_windows']}x | {r['speedup_vs_dense_row']}x | {diff:.1e} |"
            )
        lines.append("")
    if report.get("cache"):
        lines += ["## 3. Prefix cache: hit vs miss (nano-sized model)", "",
                  "| history | candidates | miss ms | hit ms | hit speed-up |",
                  "|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in report["cache"]:
            lines.append(f"| {r['history']} | {r['candidates']} | {r['miss_ms']} | {r['hit_ms']} "
                         f"| {r['hit_speedup']}x |")  # fmt: skip
        lines.append("")
    if report.get("warmup"):
        lines += ["## 4. Warm-up: `phoenix-ranker serve` to SERVING and to every shape", "",
                  "| model | compilation cache | to SERVING s | shapes then | every shape s | "
                  "shapes |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in report["warmup"]:
            lines.append(f"| {r['model']} | {r['compilation_cache']} | {r['serving_s']} | "
                         f"{r['shapes_at_serving']} | {r['all_shapes_s']} | {r['shapes']} |")  # fmt: skip
        lines.append("")
    if report.get("peer"):
        lines += ["## 5. Peer: NVIDIA Triton's dynamic batcher, same model, same ghz load", "",
                  "From `bench/peer_triton.py` (its docstring says what each side does). Closed "
                  "loop: 32 clients; open loop: ghz --async at 1.5x the lower capacity.", "",
                  "```"] + [json.dumps(r) for r in report["peer"]] + ["```", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; no peer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-engine.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--skip", default="", help="sections to skip, comma-separated")
    parser.add_argument("--peer-seconds", type=float, default=10.0)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.smoke:
        skip.add("peer")
    command = "python bench/engine.py" + (" --smoke" if args.smoke else "")
    report: dict = {"command": command, "smoke": args.smoke}
    report["machine"] = emit(machine(args.smoke))
    peak = report["machine"]["matmul_peak_gflops"]
    repeats = 1 if args.smoke else 5
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-") as tmp:
        nano_path = nano_checkpoint(Path(tmp), args.smoke)
        nano = load_checkpoint(nano_path)
        default = load_checkpoint(default_checkpoint_path())
        h = nano.config.history_seq_len
        if "forward" not in skip:
            big = [(1, h, 0), (8, h, 0), (1, h, 256), (4, h, 256), (16, h, 256)]
            small = [(1, 64, 0), (32, 64, 0), (32, 64, 16), (16, 64, 64)]
            report["forward"] = (forward_section("default", default, peak, small, repeats)
                                 + forward_section("nano", nano, peak, big[:3] if args.smoke
                                                   else big, repeats))  # fmt: skip
        if "profile" not in skip:
            report["profile"] = profile_section(nano, peak, 2 if args.smoke else 8,
                                                64 if args.smoke else 256, repeats)  # fmt: skip
        if "one_user" not in skip:
            sizes = (64, 300) if args.smoke else (256, 1024, 2800)
            histories = (h,) if args.smoke else (128, 512, 1022)
            report["one_user"] = one_user_section(nano, sizes, histories, max(1, repeats - 2))
        if "cache" not in skip:
            report["cache"] = cache_section(nano, (64,) if args.smoke else (64, 512), repeats)
        if "warmup" not in skip:
            models = {"default": None} if args.smoke else {"default": None, "nano": nano_path}
            extra = ("--max-batch-size", "2") if args.smoke else ()
            report["warmup"] = warmup_section(models, extra)
        if "peer" not in skip:
            report["peer"] = peer_section(args.peer_seconds)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    kept = ""  # bench/tables.py's section, which this report does not measure
    if args.markdown.exists() and TABLES_MARKER in (text := args.markdown.read_text()):
        kept = "\n" + TABLES_MARKER + text.split(TABLES_MARKER, 1)[1]
    args.markdown.write_text(markdown(report, command) + "\n" + kept)
    print(f"wrote {args.out} and {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()
