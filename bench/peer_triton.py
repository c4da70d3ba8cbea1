"""Peer benchmark: our server against NVIDIA Triton's dynamic batcher, same model, same load.

    .venv/bin/python bench/peer_triton.py [--seconds 10] [--smoke]

Triton (the server binary bundled in `nvidia-pytriton`) serves the SAME jitted forward pass
(`make_forward(config, rows).apply`, default checkpoint) behind its dynamic batcher; our
`phoenix-ranker serve` serves it behind ours. One load generator (ghz, gRPC) drives both, one
server at a time, in one run:

  verify      one request (synthetic seed 1: 64 history events, 32 candidates) sent to both:
              Triton's logits must equal our server's to 1e-5 (else the run stops)
  closed      32 concurrent clients, 3 s warm-up then `--seconds`: requests/s, p50, p99
  open        ghz --async --rps R, R = 1.5 x the lower of the two closed-loop capacities, for
              `--seconds`, 2 s deadlines: goodput (OK/s), p99 of OK calls, status counts
              (`cut_off_at_end`: calls still in flight when ghz stopped)
  summary     ours / Triton for closed-loop requests/s and p99 and open-loop goodput and p99

It prints JSON lines, then the summary. Both servers stay up for the whole run but only the
one under load does any work. Setup: the peer needs numpy < 2, so it runs in its own
virtual environment, created by this script on first use (about a minute) at
$PHOENIX_PEER_VENV or ~/.cache/phoenix-bench/peer-venv, with the pins in PEER_PACKAGES and
this checkout on PYTHONPATH (our `model/` and `request/` run unchanged under jax 0.4.38).
By hand: python3 -m venv ~/.cache/phoenix-bench/peer-venv &&
~/.cache/phoenix-bench/peer-venv/bin/pip install nvidia-pytriton==0.7.0 numpy==1.26.4
jax[cpu]==0.4.38 dm-haiku==0.0.17 safetensors jsonschema

What each side does per request (not the same host work): our server receives raw ids and
hashes, validates, windows and packs them itself; Triton receives the 8 already-hashed,
already-padded input tensors of one batch row (`request.layout.RankingBatch`, S=64, C=32) and
only stacks them. pytriton runs the Python callable in this script's worker process, fed by
Triton's Python-backend stub over shared memory. The Triton callable pads rows to the same
power-of-two row buckets our server compiles (candidates: `--triton-candidate-slots`, default
32 = the request's, no padding). Every request is the same user and history, so where our
server has a cross-request prefix cache (`--prefix-cache-bytes`) it is turned off (0) unless
`--ours-prefix-cache`: both then encode user + history for every request. Triton's batcher:
max_batch_size 32, max queue delay = our `max_batch_wait_ms` default (2 ms), preferred batch
sizes `--triton-preferred` (pytriton would otherwise prefer only 32, so every batch at low
load would wait the full delay), no queue policy (Triton's default: it never sheds load).
Everything shares this machine's cores (servers, XLA, ghz): compare within a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from request.columns import COLUMNS  # noqa: E402

PEER_VENV = Path(
    os.environ.get("PHOENIX_PEER_VENV", Path.home() / ".cache" / "phoenix-bench" / "peer-venv")
)
PEER_PACKAGES = [
    "nvidia-pytriton==0.7.0",  # bundles tritonserver; needs numpy < 2
    "numpy==1.26.4",
    "jax[cpu]==0.4.38",
    "dm-haiku==0.0.17",
    "safetensors",
    "jsonschema",  # request.raw (imported by request.layout)
]
MODEL_NAME = "phoenix"
INPUTS = tuple(c.name for c in COLUMNS)  # the model's inputs, in RankingBatch order
TRITON_CALL = "inference.GRPCInferenceService/ModelInfer"


# --------------------------------------------------------------------------- Triton worker
# Runs under the peer venv (`--triton-worker DIR`): imports nothing of server/ (protobuf 7).


def triton_worker(args: argparse.Namespace) -> None:
    import sysconfig

    work = Path(args.triton_worker)
    # The Python backend stub loads libpython3.11.so; under pyenv it is only in LIBDIR.
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"
    os.environ["PYTRITON_HOME"] = str(work / "pytriton-home")

    import jax
    import numpy as np
    from google.protobuf import descriptor_pb2
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from tritonclient.grpc import InferenceServerClient, InferInput, service_pb2

    from model import load_checkpoint, make_forward
    from model.checkpoint import default_checkpoint_path
    from request.layout import empty_batch

    example = dict(np.load(work / "inputs.npz"))  # one request: every input [1, ...]
    ckpt = load_checkpoint(default_checkpoint_path())
    config = ckpt.config
    forward = jax.jit(make_forward(config, ckpt.rows).apply)
    params = jax.device_put(ckpt.state.params)
    history = example["history_post_rows"].shape[1]
    candidates = example["candidate_post_rows"].shape[1]
    slots = max(candidates, args.triton_candidate_slots)
    max_batch = args.triton_max_batch
    row_buckets = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    row_buckets.append(max_batch)
    for rows in row_buckets:  # compile every shape before serving, as our server does
        forward(params, empty_batch(config, rows, history, slots)).block_until_ready()

    @batch
    def infer(**x):
        n = len(x["user_rows"])
        rows = next(b for b in row_buckets if b >= n)
        padded = empty_batch(config, rows, history, slots)
        for name, array in zip(INPUTS, padded, strict=True):
            array[tuple(slice(0, k) for k in x[name].shape)] = x[name]
        logits = np.asarray(forward(params, padded))
        return {"logits": logits[:n, :candidates]}

    tensors = [Tensor(name=k, dtype=v.dtype.type, shape=v.shape[1:]) for k, v in example.items()]
    actions = config.num_actions
    ports = [int(p) for p in args.triton_ports.split(",")]
    triton = Triton(
        workspace=str(work / "triton-workspace"),
        config=TritonConfig(http_address="127.0.0.1", http_port=ports[0], grpc_address="127.0.0.1",
                            grpc_port=ports[1], metrics_port=ports[2], log_verbose=0),
    )  # fmt: skip
    preferred = [int(v) for v in args.triton_preferred.split(",") if v]
    triton.bind(
        model_name=MODEL_NAME,
        infer_func=infer,
        inputs=tensors,
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(candidates, actions))],
        config=ModelConfig(
            max_batch_size=max_batch,
            batcher=DynamicBatcher(
                max_queue_delay_microseconds=args.triton_delay_us,
                preferred_batch_size=preferred or None,
            ),
        ),
        strict=True,
    )
    triton.run()

    # ghz's inputs: a protoset of Triton's gRPC API and one serialized ModelInferRequest.
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        fd.CopyToProto(files.file.add())

    add(service_pb2.DESCRIPTOR)
    (work / "triton.protoset").write_bytes(files.SerializeToString())
    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    kinds = {np.dtype(np.int32): "INT32", np.dtype(np.uint8): "UINT8"}
    for name, array in example.items():
        request.inputs.add(name=name, datatype=kinds[array.dtype], shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    request.outputs.add(name="logits")
    (work / "triton-request.bin").write_bytes(request.SerializeToString())

    # Verify: Triton's logits for this request against our server's.
    client = InferenceServerClient(f"127.0.0.1:{ports[1]}")
    infer_inputs = []
    for name, array in example.items():
        infer_inputs.append(InferInput(name, list(array.shape), kinds[array.dtype]))
        infer_inputs[-1].set_data_from_numpy(array)
    got = client.infer(MODEL_NAME, infer_inputs).as_numpy("logits")[0]
    expected = np.load(work / "expected.npy")
    ready = {
        "grpc_port": ports[1], "metrics_port": ports[2], "jax": jax.__version__,
        "numpy": np.__version__, "logits_shape": list(got.shape),
        "max_abs_diff": float(np.max(np.abs(got - expected))),
        "nan": int(np.isnan(got).sum()), "row_buckets": row_buckets, "candidate_slots": slots,
        "preferred_batch_size": preferred, "max_queue_delay_us": args.triton_delay_us,
    }  # fmt: skip
    (work / "triton-ready.json.tmp").write_text(json.dumps(ready))
    (work / "triton-ready.json.tmp").rename(work / "triton-ready.json")
    sys.stdin.read()  # until the parent closes our stdin
    triton.stop()


# --------------------------------------------------------------------------- orchestration


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"# creating the peer venv at {PEER_VENV} (about a minute)", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)  # not our venv's python
    subprocess.run([str(base), "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class TritonWorker:
    """The peer venv's `bench/peer_triton.py --triton-worker DIR`, until closed."""

    def __init__(self, python: Path, work: Path, args: argparse.Namespace):
        self.work = work
        self.log_path = work / "triton-worker.log"
        cmd = [str(python), str(Path(__file__).resolve()), "--triton-worker", str(work),
               "--triton-ports", ",".join(map(str, free_ports(3))),
               "--triton-preferred", args.triton_preferred,
               "--triton-delay-us", str(args.triton_delay_us),
               "--triton-max-batch", str(args.triton_max_batch),
               "--triton-candidate-slots", str(args.triton_candidate_slots)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=work)  # fmt: skip
        deadline = time.monotonic() + 300
        while not (work / "triton-ready.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                sys.exit(f"Triton did not start:\n{self.log_path.read_text()[-6000:]}")
            time.sleep(0.2)
        self.ready = json.loads((work / "triton-ready.json").read_text())
        self.target = f"127.0.0.1:{self.ready['grpc_port']}"

    def metrics(self) -> dict[str, float]:
        import urllib.request

        url = f"http://127.0.0.1:{self.ready['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("nv_inference_") and "{" in line:
                name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
                out[name] = out.get(name, 0.0) + value
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> TritonWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    from server.config import BatcherConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured load")
    parser.add_argument("--warmup", type=float, default=3.0, help="closed-loop warm-up seconds")
    parser.add_argument("--smoke", action="store_true", help="1 s loads, 1 s warm-up")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--open-factor", type=float, default=1.5,
                        help="open-loop rate / the lower closed-loop capacity")  # fmt: skip
    parser.add_argument("--server-args", default="", help="extra serve flags, space separated")
    parser.add_argument("--triton-preferred", default="1,2,4,8,16,32",
                        help="Triton preferred_batch_size list (comma-separated)")  # fmt: skip
    parser.add_argument("--triton-delay-us", type=int,
                        default=int(BatcherConfig().max_batch_wait_ms * 1000))  # fmt: skip
    parser.add_argument("--triton-max-batch", type=int, default=32)
    parser.add_argument("--triton-candidate-slots", type=int, default=32)
    parser.add_argument("--ours-prefix-cache", action="store_true",
                        help="keep our server's cross-request prefix cache (every request here "
                        "is the same user and history: a 100%% hit rate)")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.warmup = 1.0, 1.0
    run(args)


def run(args: argparse.Namespace) -> None:
    import platform

    import numpy as np

    from bench import host_path as hp
    from model import load_checkpoint
    from model.checkpoint import default_checkpoint_path
    from request.encoding import encode
    from request.layout import Piece, pack_rows
    from request.raw import RawRequest
    from request.synthetic import synthetic_request_dict
    from server.config import ServerConfig
    from server.rpc import ranking_pb2 as pb
    from tests.server.harness import ServerProcess

    work = hp.OUT
    emit = hp.emit
    python = ensure_peer_venv()
    emit({"machine": platform.machine(), "cpus": os.cpu_count(),
          "python": platform.python_version(), "seconds": args.seconds, "work": str(work)})  # fmt: skip

    # The one request both servers get: ours as a RankRequest (raw ids, columnar form, the
    # bytes bench/host_path.py sends), Triton's as the hashed, packed batch row of it.
    history, candidates = 64, 32
    ours_bin = hp.request_file(candidates, history)
    raw = RawRequest.from_dict(synthetic_request_dict(1, history, candidates, 16))
    ckpt = load_checkpoint(default_checkpoint_path())
    encoded = encode(raw, ckpt.config, ckpt.rows)
    row = pack_rows(ckpt.config, [Piece(encoded, 0, candidates)], 1, history, candidates)
    np.savez(work / "inputs.npz", **row._asdict())

    def ghz(name: str, target: str, spec: tuple, data: Path, *flags: str) -> dict:
        out = work / f"ghz-{name}.json"
        cmd = [hp.ghz_binary(), "--insecure", *spec, "--binary-file", str(data), "-O", "json",
               "-o", str(out), *flags, target]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        return json.loads(out.read_text())

    def closed(name: str, target: str, spec: tuple, data: Path) -> dict:
        c = str(args.clients)
        ghz(f"{name}-warmup", target, spec, data, "-c", c, "-z", f"{args.warmup}s")
        r = ghz(f"{name}-closed", target, spec, data, "-c", c, "-z", f"{args.seconds}s",
                "--connections", "2")  # fmt: skip
        ok = r["statusCodeDistribution"].get("OK", 0)
        return {"requests_per_s": round(ok / (r["total"] / 1e9), 1),
                "p50_ms": hp.latency_ms(r, 50), "p99_ms": hp.latency_ms(r, 99),
                "codes": r["statusCodeDistribution"]}  # fmt: skip

    def open_loop(name: str, target: str, spec: tuple, data: Path, rate: int) -> dict:
        r = ghz(f"{name}-open", target, spec, data, "--async", "--rps", str(rate), "-c", "64",
                "-z", f"{args.seconds}s", "--timeout", "2s", "--connections", "4")  # fmt: skip
        codes: dict[str, int] = {}
        ok_ms = []
        for d in r["details"]:
            status = d.get("status", "OK")
            if status == "Unavailable" and "transport is closing" in d.get("error", ""):
                status = "cut_off_at_end"  # in flight when ghz stopped: not the server's doing
            codes[status] = codes.get(status, 0) + 1
            if status == "OK":
                ok_ms.append(d["latency"] / 1e6)
        pct = lambda q: round(float(np.percentile(ok_ms, q)), 2) if ok_ms else None  # noqa: E731
        return {"offered_rps": rate, "goodput_rps": round(len(ok_ms) / (r["total"] / 1e9), 1),
                "p50_ms": pct(50), "p99_ms": pct(99), "codes": codes}  # fmt: skip

    cache = {"PHOENIX_COMPILATION_CACHE": str(ROOT / ".bench-jax-cache")}
    server_args = args.server_args.split()
    reuse = "prefix_cache_bytes" in {f.name for f in dataclasses.fields(ServerConfig)}
    if reuse and not args.ours_prefix_cache:
        # Every request of this benchmark is the same user and history: cross-request prefix
        # reuse would skip the user+history encoding Triton computes every time.
        server_args = ["--prefix-cache-bytes", "0", *server_args]
    emit({"section": "ours", "serve_args": server_args})
    with ServerProcess(*server_args, env=cache) as server:
        response = server.client.rank(pb.RankRequest.FromString(ours_bin.read_bytes()))
        expected = np.array([list(s.logits) for s in response.scores], np.float32)
        np.save(work / "expected.npy", expected)
        ours_spec = ("--proto", str(hp.PROTO), "--call", hp.CALL)
        with TritonWorker(python, work, args) as triton:
            ready = triton.ready
            emit({"section": "verify", "triton_logits_shape": ready["logits_shape"],
                  "ours_logits_shape": list(expected.shape),
                  "max_abs_diff": ready["max_abs_diff"], "nan": ready["nan"],
                  "peer": {k: ready[k] for k in ("jax", "numpy", "row_buckets",
                           "candidate_slots", "preferred_batch_size", "max_queue_delay_us")}})  # fmt: skip
            if not ready["max_abs_diff"] <= 1e-5 or ready["nan"]:
                sys.exit("Triton's logits differ from our server's: not the same model")
            triton_spec = ("--protoset", str(work / "triton.protoset"), "--call", TRITON_CALL)
            triton_bin = work / "triton-request.bin"
            sides = {"ours": (server.target, ours_spec, ours_bin),
                     "triton": (triton.target, triton_spec, triton_bin)}  # fmt: skip
            result: dict[str, dict] = {"ours": {}, "triton": {}}
            for side, (target, spec, data) in sides.items():
                result[side]["closed"] = closed(side, target, spec, data)
                emit({"section": "closed", "server": side, "clients": args.clients,
                      **result[side]["closed"]})  # fmt: skip
            rate = int(
                args.open_factor * min(r["closed"]["requests_per_s"] for r in result.values())
            )
            for side, (target, spec, data) in sides.items():
                result[side]["open"] = open_loop(side, target, spec, data, max(rate, 1))
                emit({"section": "open", "server": side, **result[side]["open"]})
            m = triton.metrics()
            triton_batch = m.get("nv_inference_count", 0) / max(
                m.get("nv_inference_exec_count", 1), 1
            )
        m = server.metrics()
        ours_batch = m["phoenix_batch_size_sum"] / max(m["phoenix_batch_size_count"], 1)
    emit({"section": "batches", "ours_mean_requests_per_batch": round(ours_batch, 2),
          "triton_mean_requests_per_batch": round(triton_batch, 2)})  # fmt: skip

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    o, t = result["ours"], result["triton"]
    summary = {
        "section": "summary",
        "closed_rps": {"ours": o["closed"]["requests_per_s"], "triton": t["closed"]["requests_per_s"],
                       "ours_over_triton": ratio(o["closed"]["requests_per_s"], t["closed"]["requests_per_s"])},
        "closed_p99_ms": {"ours": o["closed"]["p99_ms"], "triton": t["closed"]["p99_ms"],
                          "ours_over_triton": ratio(o["closed"]["p99_ms"], t["closed"]["p99_ms"])},
        "open_goodput_rps": {"offered": rate, "ours": o["open"]["goodput_rps"],
                             "triton": t["open"]["goodput_rps"],
                             "ours_over_triton": ratio(o["open"]["goodput_rps"], t["open"]["goodput_rps"])},
        "open_p99_ms": {"ours": o["open"]["p99_ms"], "triton": t["open"]["p99_ms"],
                        "ours_over_triton": ratio(o["open"]["p99_ms"], t["open"]["p99_ms"])},
    }  # fmt: skip
    emit(summary)
    print(
        f"\nclosed loop ({args.clients} clients): ours {o['closed']['requests_per_s']} req/s "
        f"p99 {o['closed']['p99_ms']} ms | Triton {t['closed']['requests_per_s']} req/s "
        f"p99 {t['closed']['p99_ms']} ms | throughput ours/Triton "
        f"{summary['closed_rps']['ours_over_triton']}, p99 ours/Triton "
        f"{summary['closed_p99_ms']['ours_over_triton']}\n"
        f"open loop ({rate} req/s offered): ours goodput {o['open']['goodput_rps']} p99 "
        f"{o['open']['p99_ms']} ms {o['open']['codes']} | Triton goodput "
        f"{t['open']['goodput_rps']} p99 {t['open']['p99_ms']} ms {t['open']['codes']} | "
        f"goodput ours/Triton {summary['open_goodput_rps']['ours_over_triton']}, p99 ours/Triton "
        f"{summary['open_p99_ms']['ours_over_triton']}"
    )


def parse_worker_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--triton-worker", required=True)
    parser.add_argument("--triton-ports", required=True)
    parser.add_argument("--triton-preferred", default="")
    parser.add_argument("--triton-delay-us", type=int, required=True)
    parser.add_argument("--triton-max-batch", type=int, required=True)
    parser.add_argument("--triton-candidate-slots", type=int, required=True)
    return parser.parse_args()


if __name__ == "__main__":
    if "--triton-worker" in sys.argv:
        triton_worker(parse_worker_args())
    else:
        main()
