"""The host path under load and overload, measured with an independent load generator (ghz).

    python bench/host_path.py [--seconds 10] [--overload-seconds 20] [--skip frontends,...]

One run prints every figure the host-path targets are stated in (JSON lines, then a summary):

  forward     the bare model at the batches the server forms for 32- and 512-candidate
              requests (full batches, history 64), two ways: the server's own engine (its
              ModelRunner: prefix and chunk calls, pack included, prefix cache off) gives F;
              the one-pass forward (one row per request) is kept for comparison with earlier
              runs. Candidates/s of each
  empty       E: requests/s of a grpcio server whose Rank only parses the request
              (bench/empty_server.py; its asyncio and synchronous servers, E the faster),
              same load generator, same request bytes
  served      the real server, closed loop, 32 clients (ghz, and the Rust loadgen), 32 and
              512 candidates: requests/s, candidates/s, p50/p99, and the ratios to L and to the
              bare forward, with L = 1 / (1/E + F) the composite ceiling of a 2-core machine
  overload    capacity C (closed loop, 64 candidates), then ghz open loop at 4 x C for
              `--overload-seconds` with 2 s deadlines: goodput / C, status codes, how fast
              refusals come back, the accepted p99, and recovery once the load stops
  ordinary    status codes of closed-loop clients, 48 and 256 calls at once (48 candidates),
              as the client saw them and as the server counted them (transport sheds
              included): ordinary load must see no CANCELLED
  mixed       small requests (32 candidates) open loop at 70% of their capacity, alone and
              with one 2,800-candidate request a second mixed in: the small ones' p99 ratio
  door        what the transport alone spends per call: CPU of bench/empty_server.py parsing,
              and refusing (RESOURCE_EXHAUSTED at once, asyncio and synchronous servers), at a
              fixed open-loop rate
  buckets     served 32-candidate requests/s with the default candidate buckets against the
              same without the 32-slot bucket (two chunks of 16 per request instead of one)
  heavy       small clients' p99 alone and beside one client sending the largest requests the
              limits allow, and beside one sending 4 MB requests (refused by the action cap)
  xai         server CPU per call of xAI's PredictNextActions (its history as Arrow and as
              aggregated protos) against Rank (columnar), same requests, 32 and 2,800
              candidates, closed loop
  frontends   the served, overload, ordinary and mixed rows again with `--frontend-workers 2`
              (the default, `auto`, runs none on 2 cores)

Everything shares the machine's cores (server, XLA, load generators): compare within a run.
ghz: `go install github.com/bojand/ghz/cmd/ghz@v0.93.0` (found on PATH or in ~/go/bin).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from request.raw import RawRequest  # noqa: E402
from request.synthetic import synthetic_request_dict  # noqa: E402
from server.client import RankingClient  # noqa: E402
from server.contracts.convert import raw_request_to_columnar_pb, raw_request_to_pb  # noqa: E402
from server.rpc import ranking_pb2 as pb  # noqa: E402
from tests.server.harness import ServerProcess  # noqa: E402

PROTO = ROOT / "proto" / "phoenix" / "ranking" / "v1" / "ranking.proto"
CALL = "phoenix.ranking.v1.RankingService.Rank"
XAI_PROTO = ROOT / "proto" / "xai" / "recsys" / "v1" / "recsys.proto"  # see xai_protoset()
XAI_CALL = "xai.recsys.v1.RecsysPredictor.PredictNextActions"
OUT = Path(tempfile.mkdtemp(prefix="phoenix-bench-"))


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def ghz_binary() -> str:
    found = shutil.which("ghz") or str(Path.home() / "go" / "bin" / "ghz")
    if not Path(found).exists():
        sys.exit("ghz not found: go install github.com/bojand/ghz/cmd/ghz@v0.93.0")
    return found


def request_file(candidates: int, history: int = 64, form: str = "columns", seed: int = 1) -> Path:
    to_pb = raw_request_to_columnar_pb if form == "columns" else raw_request_to_pb
    path = OUT / f"req-{form}-{history}-{candidates}-{seed}.bin"
    path.write_bytes(ghz_safe(lambda s: to_pb(RawRequest.from_dict(
        synthetic_request_dict(s, history, candidates, 16))).SerializeToString(), seed))  # fmt: skip
    return path


def ghz_safe(make, seed: int) -> bytes:
    """`make(seed)`, or the first next seed's: ghz v0.93 runs even binary call data through
    Go's templates, which fail on bytes "{{" (large requests contain them by chance)."""
    while b"{{" in (data := make(seed)):
        seed += 1000
    return data


def xai_protoset() -> Path:
    """xAI's proto compiled to a descriptor set: ghz's own parser predates proto3 `optional`,
    which the contract uses."""
    from grpc_tools import protoc

    out = OUT / "recsys.protoset"
    args = ["protoc", f"-I{XAI_PROTO.parent}", "--include_imports",
            f"--descriptor_set_out={out}", XAI_PROTO.name]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {XAI_PROTO}")
    return out


def xai_request_file(candidates: int, form: str, history: int = 64, seed: int = 1) -> Path:
    """The synthetic request as xAI's PredictNextActions (one candidate set; the history as the
    home-mixer sends it: `form` columnar_sequences (Arrow) or orderedAggregatedUserActionsList),
    made expressible in xAI's contract (one surface per set, no dwell_time history action)."""
    from tests.server import xai_forms

    def make(seed: int) -> bytes:
        raw = xai_forms.expressible(
            RawRequest.from_dict(synthetic_request_dict(seed, history, candidates, 16)), False
        )
        request = xai_forms.request([raw], form)
        for i, candidate in enumerate(request.candidateSets[0].candidates):
            candidate.MergeFromString(xai_forms.tweet_fields(i))  # fields our subset lacks
        return request.SerializeToString()

    path = OUT / f"xai-{form}-{history}-{candidates}-{seed}.bin"
    path.write_bytes(ghz_safe(make, seed))
    return path


def ghz(target: str, data: Path, *flags: str, details: bool = False, server_pid: int = 0,
        proto: Path = PROTO, call: str = CALL) -> dict:  # fmt: skip
    """Run ghz; returns its JSON report (with per-call details when asked), and with
    `server_pid` the CPU seconds that process (and its children) and ghz itself used."""
    out = OUT / "ghz.json"
    schema = "--protoset" if proto.suffix == ".protoset" else "--proto"
    cmd = [ghz_binary(), "--insecure", schema, str(proto), "--call", call,
           "--binary-file", str(data), "-O", "json", "-o", str(out), *flags, target]  # fmt: skip
    server_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
    ghz_before = _children_cpu_seconds()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    if server_pid:
        report["cpu_seconds"] = {
            "server": round(tree_cpu_seconds(server_pid) - server_before, 3),
            "ghz": round(_children_cpu_seconds() - ghz_before, 3),
        }
    if not details:
        report.pop("details", None)
    return report


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) of `pid` and its descendants (Linux /proc)."""
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            parents[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(p, 0.0) for p in tree)


def latency_ms(report: dict, q: int) -> float:
    for entry in report.get("latencyDistribution") or ():
        if entry["percentage"] == q:
            return round(entry["latency"] / 1e6, 2)
    return float("nan")


def closed_loop(target: str, data: Path, candidates: int, seconds: float, clients: int = 32):
    ghz(target, data, "-c", str(clients), "-z", "3s")  # warm-up
    r = ghz(target, data, "-c", str(clients), "-z", f"{seconds}s", "--connections", "2")
    ok = r["statusCodeDistribution"].get("OK", 0)
    return {
        "requests_per_s": round(ok / (r["total"] / 1e9), 1),
        "candidates_per_s": round(ok * candidates / (r["total"] / 1e9)),
        "p50_ms": latency_ms(r, 50),
        "p99_ms": latency_ms(r, 99),
        "codes": r["statusCodeDistribution"],
    }


def bare_forward(shapes: list[tuple[int, int, int]]) -> dict[tuple, float]:
    """Median seconds of one jitted call per (rows, history slots, candidate slots)."""
    import jax

    from bench.forward import fill
    from model import load_checkpoint, make_forward
    from model.checkpoint import default_checkpoint_path
    from request.layout import empty_batch

    ckpt = load_checkpoint(default_checkpoint_path())
    forward = jax.jit(make_forward(ckpt.config, ckpt.rows).apply)
    params = jax.device_put(ckpt.state.params)
    rng = np.random.default_rng(0)
    out = {}
    for shape in shapes:
        batch = fill(empty_batch(ckpt.config, *shape), rng, ckpt.config.product_surface_vocab_size)
        batch = jax.device_put(batch)
        forward(params, batch).block_until_ready()
        times = []
        for _ in range(50):
            start = time.perf_counter()
            forward(params, batch).block_until_ready()
            times.append(time.perf_counter() - start)
        out[shape] = statistics.median(times)
    return out


def bare_engine(candidates: int, requests: int, repeats: int = 20,
                buckets: tuple[int, ...] | None = None) -> float:  # fmt: skip
    """Median seconds per request of the server's own ModelRunner (pack + run, prefix cache
    off, as for requests of distinct users) over `requests` requests of `candidates`
    candidates (history 64) composed into batches by the batcher's policy; `buckets`: the
    candidate buckets (default: the server's)."""
    import dataclasses

    from bench.engine import PrefixOnce, synthetic_request
    from model import load_checkpoint
    from model.checkpoint import default_checkpoint_path
    from request.encoding import encode
    from request.layout import Piece, windows
    from server.scheduling.composition import next_batch_size

    ckpt = load_checkpoint(default_checkpoint_path())
    engine = PrefixOnce(ckpt) if buckets is None else PrefixOnce(ckpt, buckets=buckets)
    plan, runner = engine.plan, engine.runner
    encoded = [encode(synthetic_request(i, 64, candidates), ckpt.config, ckpt.rows)
               for i in range(requests)]  # fmt: skip

    def once() -> float:
        fresh = [dataclasses.replace(e) for e in encoded]  # new requests: their prefixes miss
        pieces = [Piece(e, a, b) for e in fresh
                  for a, b in windows(candidates, plan.window_for(candidates, 64))]  # fmt: skip
        start = time.perf_counter()
        while pieces:
            k = next_batch_size(((64, p.stop - p.start) for p in pieces), plan)
            batch, pieces = pieces[:k], pieces[k:]
            runner.run(runner.pack(batch))
        return time.perf_counter() - start

    once()  # compiles and first runs
    return statistics.median(once() for _ in range(repeats)) / requests


def rust_loadgen(target: str, candidates: int, seconds: float, clients: int = 32) -> dict | None:
    crate = ROOT / "clients" / "rust"
    build = subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "loadgen"],
                           cwd=crate, capture_output=True)  # fmt: skip
    if build.returncode:
        return None
    out = subprocess.run(
        [str(crate / "target" / "release" / "loadgen"), "--target", target,
         "--concurrency", str(clients), "--duration-secs", str(seconds), "--warmup-secs", "3",
         "--history", "64", "--candidates", str(candidates), "--connections", "2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    r = json.loads(out)
    return {"requests_per_s": r["requests_per_s"], "candidates_per_s": r["candidates_per_s"],
            "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"]}  # fmt: skip


def overload(target: str, server: ServerProcess, seconds: float, capacity: float) -> dict:
    data = request_file(64)
    rate, timeout = int(4 * capacity), 2.0
    before = server.metrics()
    r = ghz(target, data, "--async", "--rps", str(rate), "-c", "64", "-z", f"{seconds}s",
            "--timeout", f"{timeout}s", "--connections", "4", details=True,
            server_pid=server.proc.pid)  # fmt: skip
    ended = time.monotonic()
    # Recovery: how long after the load stops until a request is served normally again.
    with RankingClient(target) as client:
        request = pb.RankRequest.FromString(data.read_bytes())
        while True:
            try:
                started = time.monotonic()
                client.rank(request, timeout=2)
                if time.monotonic() - started < 0.1:
                    break
            except Exception:  # noqa: BLE001 - still refusing: keep probing
                pass
        recovery = time.monotonic() - ended
    details = r["details"]
    # ghz ends its run by closing its connections: calls still in flight then end UNAVAILABLE
    # ("transport is closing") or CANCELLED at the client, whatever the server did. Calls that
    # started at least one deadline before the end had their answer (or deadline) first: the
    # status invariants are judged on those.
    last_start = max(_timestamp(d) for d in details) - timeout
    codes: dict[str, int] = {}
    settled: dict[str, int] = {}
    ok_ms, refused_ms = [], []
    for d in details:
        status = d.get("status", "OK")
        codes[status] = codes.get(status, 0) + 1
        if _timestamp(d) <= last_start:
            settled[status] = settled.get(status, 0) + 1
        (ok_ms if status == "OK" else refused_ms).append(d["latency"] / 1e6)
    span = r["total"] / 1e9
    m = server.metrics()
    delta = lambda key: m.get(key, 0) - before.get(key, 0)  # noqa: E731
    pct = lambda v, q: round(float(np.percentile(v, q)), 2) if v else None  # noqa: E731
    return {
        "offered_rps": rate,
        "capacity_rps": round(capacity, 1),
        "goodput_rps": round(len(ok_ms) / span, 1),
        "goodput_over_capacity": round(len(ok_ms) / span / capacity, 3),
        "codes": codes,
        "codes_of_calls_started_a_deadline_before_the_end": settled,
        "refused_ms": {"p50": pct(refused_ms, 50), "p99": pct(refused_ms, 99),
                       "max": pct(refused_ms, 100), "within_50ms": round(
                           sum(v <= 50 for v in refused_ms) / max(1, len(refused_ms)), 4)},
        "accepted_ms": {"p50": pct(ok_ms, 50), "p99": pct(ok_ms, 99), "max": pct(ok_ms, 100)},
        "recovery_s": round(recovery, 3),
        "queue_work_peak_ms": round(1000 * m["phoenix_queue_work_peak_seconds"], 1),
        "server_counted": {
            "transport_calls": delta("phoenix_transport_calls_total"),
            "transport_shed": delta("phoenix_transport_calls_shed_total"),
            **{code: delta(f"phoenix_requests_total{{code={code},method=Rank}}")
               for code in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED")},
        },
        "cpu_cores": {k: round(v / span, 2) for k, v in r["cpu_seconds"].items()},
        "refusals": {k: v for k, v in m.items() if k.startswith("phoenix_admission_refusals")},
    }  # fmt: skip


def _timestamp(detail: dict) -> float:
    """A ghz detail's start time in seconds (RFC 3339, cut to microseconds for Python)."""
    return datetime.datetime.fromisoformat(detail["timestamp"].rstrip("Z")[:26]).timestamp()


def xai_cost(target: str, server: ServerProcess, seconds: float) -> list[dict]:
    """Server CPU per call of PredictNextActions (both history forms the home-mixer sends)
    against Rank in the columnar form, for requests of the same sizes: what decoding xAI's
    request (2,800 TweetInfo messages with their ids) and writing its response add to a call.
    Each runs at the same fixed rate, below what either sustains: a closed loop would run them
    at the load generator's pace (ghz decodes xAI's answers with dynamic messages, slower),
    and the server's constant background CPU would then weigh on the slower one."""
    out, protoset = [], xai_protoset()
    for m, clients, rate in ((32, 16, 250), (2800, 4, 10)):
        runs = {"rank_columnar": (request_file(m), PROTO, CALL)}
        for form in ("columnar_sequences", "orderedAggregatedUserActionsList"):
            runs[f"xai_{form}"] = (xai_request_file(m, form), protoset, XAI_CALL)
        record = {"candidates": m, "clients": clients, "rate_rps": rate}
        for name, (data, proto, call) in runs.items():
            ghz(target, data, "-c", str(clients), "-z", "2s", proto=proto, call=call)  # warm-up
            r = ghz(target, data, "-c", str(clients), "-z", f"{seconds}s", "--connections", "2",
                    "--rps", str(rate), server_pid=server.proc.pid, proto=proto, call=call)  # fmt: skip
            ok = r["statusCodeDistribution"].get("OK", 0)
            record[name] = {
                "requests_per_s": round(ok / (r["total"] / 1e9), 1),
                "server_cpu_ms_per_call": round(1000 * r["cpu_seconds"]["server"] / max(ok, 1), 3),
                "request_bytes": data.stat().st_size,
                "codes": r["statusCodeDistribution"],
            }
        base = record["rank_columnar"]["server_cpu_ms_per_call"]
        for name in runs:
            if name != "rank_columnar":
                record[name]["cpu_over_rank"] = round(
                    record[name]["server_cpu_ms_per_call"] / base, 3
                )
        out.append(emit({"section": "xai", **record}))
    return out


class EmptyServer:
    """bench/empty_server.py with `flags`, on an ephemeral port, for a `with` block."""

    def __init__(self, *flags: str):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "empty_server.py"),
                                      "--port", "0", *flags], stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.target = f"127.0.0.1:{int(self.proc.stdout.readline().split()[1])}"

    def __enter__(self) -> EmptyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()


def door(data: Path, seconds: float, rate: int = 1500) -> dict:
    """CPU per call of the bare transport, parsing and refusing, at `rate` calls/s."""
    out = {}
    modes = (("parse", ()), ("refuse", ("--refuse",)), ("refuse_sync", ("--refuse", "--sync")))
    for mode, flags in modes:
        with EmptyServer(*flags) as server:
            ghz(server.target, data, "--async", "--rps", str(rate), "-z", "2s")  # warm-up
            r = ghz(server.target, data, "--async", "--rps", str(rate), "-z", f"{seconds}s",
                    "--timeout", "2s", "--connections", "4", server_pid=server.proc.pid)  # fmt: skip
        out[mode] = {
            "calls": r["count"], "codes": r["statusCodeDistribution"],
            **{f"{k}_cpu_us_per_call": round(1e6 * v / r["count"], 1)
               for k, v in r["cpu_seconds"].items()},
        }  # fmt: skip
    return out


def ordinary(target: str, server: ServerProcess) -> dict:
    """Codes of closed-loop clients (each sends its next call when the last is answered), 48
    and 256 at once, a fixed number of calls each (so that no call is in flight when ghz
    stops). ghz ignores retry hints: at 256 past the transport's capacity some calls are
    refused RESOURCE_EXHAUSTED, which a client honouring the hint would space out."""
    data = request_file(48)
    out = {}
    for clients, calls_each in ((48, 40), (256, 10)):
        before = server.metrics()
        r = ghz(target, data, "-c", str(clients), "-n", str(clients * calls_each),
                "--timeout", "10s", "--connections", "4")  # fmt: skip
        m = server.wait_for_metrics(lambda m: not m["phoenix_transport_calls_in_flight"],
                                    "calls to finish", 30)  # fmt: skip
        keys = {"transport_shed": "phoenix_transport_calls_shed_total",
                **{code: f"phoenix_requests_total{{code={code},method=Rank}}"
                   for code in ("OK", "RESOURCE_EXHAUSTED", "CANCELLED")}}  # fmt: skip
        out[f"closed_{clients}"] = {
            "codes": r["statusCodeDistribution"],
            "requests_per_s": round(r["rps"], 1),
            "p99_ms": latency_ms(r, 99),
            "server_counted": {k: m.get(v, 0) - before.get(v, 0) for k, v in keys.items()},
        }
    return out


def mixed(target: str, seconds: float, capacity: float) -> dict:
    """Small requests' p99 at 70% of their capacity, alone and beside one 2,800-candidate
    request a second (open loop both): what a large request costs the small ones."""
    small, big = request_file(32), request_file(2800)
    rate = int(0.7 * capacity)

    def small_load() -> dict:
        r = ghz(target, small, "--async", "--rps", str(rate), "-c", "64", "-z", f"{seconds}s",
                "--timeout", "5s", "--connections", "4")  # fmt: skip
        return {"p50_ms": latency_ms(r, 50), "p99_ms": latency_ms(r, 99),
                "codes": r["statusCodeDistribution"]}  # fmt: skip

    ghz(target, small, "--async", "--rps", str(rate), "-z", "2s")  # warm-up
    alone = small_load()
    background = subprocess.Popen(
        [ghz_binary(), "--insecure", "--proto", str(PROTO), "--call", CALL, "--binary-file",
         str(big), "--async", "--rps", "1", "-c", "4", "-z", f"{seconds + 2}s", "--timeout",
         "10s", "-O", "json", "-o", str(OUT / "mixed-big.json"), target],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)  # the large requests' load is on when the measured window starts
    beside = small_load()
    background.wait()
    bg = json.loads((OUT / "mixed-big.json").read_text())
    return {
        "small_rate_rps": rate,
        "small_alone": alone,
        "small_beside_large": beside,
        "large": {"codes": bg["statusCodeDistribution"], "p50_ms": latency_ms(bg, 50)},
        "p99_ratio": round(beside["p99_ms"] / alone["p99_ms"], 2),
    }


def bucket_gain(flags: tuple[str, ...], env: dict, seconds: float) -> dict:
    """32-candidate requests with the default buckets and without the 32-slot one: the
    engine's time per request (32 requests a batch) and the served requests/s."""
    from server.config import ShapeConfig

    default = ShapeConfig().candidate_buckets
    variants = {"default": default, "without_32": tuple(b for b in default if b != 32)}
    out = {}
    for name, buckets in variants.items():
        listed = ",".join(map(str, buckets))
        engine_ms = 1e3 * bare_engine(32, 32, buckets=buckets)
        with ServerProcess(*flags, "--candidate-buckets", listed, env=env) as server:
            out[name] = {"buckets": listed, "engine_ms_per_request": round(engine_ms, 4),
                         **closed_loop(server.target, request_file(32), 32, seconds)}  # fmt: skip
    base, new = out["without_32"], out["default"]
    out["engine_gain"] = round(base["engine_ms_per_request"] / new["engine_ms_per_request"], 3)
    out["served_gain"] = round(new["requests_per_s"] / base["requests_per_s"], 3)
    return out


def heavy(target: str, seconds: float) -> dict:
    small = request_file(32)
    # The largest valid request: 4,096 history events with every action, 2,800 candidates.
    raw = RawRequest.from_dict(synthetic_request_dict(3, 4096, 2800, 16))
    big = pb.RankRequest.FromString(raw_request_to_pb(raw).SerializeToString())
    for event in big.history:
        del event.actions[:]
        event.actions.extend(range(1, 20))
    big_path = OUT / "req-largest-valid.bin"
    big_path.write_bytes(big.SerializeToString())
    # One history event with 1.9 M action entries (1.9 MB: over --max-request-bytes, under
    # gRPC's own limit, so the service refuses it, INVALID_ARGUMENT, before parsing), and one
    # with 4.19 M (4.2 MB, the case: over gRPC's limit, which refuses it itself).
    huge = {}
    for name, entries in (("1.9mb", 1_900_000), ("4mb", 4_190_000)):
        request = pb.RankRequest(user_id=1)
        request.history.add(post_id=1, author_id=1, actions=[1] * entries)
        huge[name] = OUT / f"req-{name}.bin"
        huge[name].write_bytes(request.SerializeToString())
    result = {
        "largest_valid_bytes": big_path.stat().st_size,
        **{f"{name}_bytes": path.stat().st_size for name, path in huge.items()},
    }
    result["alone"] = closed_loop(target, small, 32, seconds, clients=16)
    beside = {"beside_largest_valid": big_path, **{f"beside_{k}": v for k, v in huge.items()}}
    for name, path in beside.items():
        background = subprocess.Popen(
            [ghz_binary(), "--insecure", "--proto", str(PROTO), "--call", CALL, "--binary-file",
             str(path), "-c", "1", "-z", f"{seconds + 4}s", "-O", "json", "-o",
             str(OUT / f"{name}.json"), target], stdout=subprocess.DEVNULL)  # fmt: skip
        result[name] = closed_loop(target, small, 32, seconds, clients=16)
        background.wait()
        bg = json.loads((OUT / f"{name}.json").read_text())
        result[name]["heavy_client"] = {"codes": bg["statusCodeDistribution"],
                                        "p50_ms": latency_ms(bg, 50)}  # fmt: skip
        result[name]["p99_ratio"] = round(result[name]["p99_ms"] / result["alone"]["p99_ms"], 2)
    return result


def measure_empty(small: Path, seconds: float, forward: dict) -> tuple[float, float]:
    """E (requests/s of the faster empty server) and L = 1 / (1/E + F)."""
    rates = {}
    for kind, flags in (("aio", ()), ("sync", ("--sync",))):
        with EmptyServer(*flags) as server:
            rates[kind] = closed_loop(server.target, small, 32, seconds)
    E = max(r["requests_per_s"] for r in rates.values())
    L = 1 / (1 / E + forward[32]["F_ms_per_request"] / 1e3)
    emit({"section": "empty", "E_rps": E, "L_rps": round(L, 1), **rates})
    return E, L


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--server-args", default="", help="extra serve flags, space separated")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    emit({"machine": platform.machine(), "cpus": os.cpu_count(),
          "python": platform.python_version()})  # fmt: skip

    # Shapes the server forms (default buckets, history 64): a 32-candidate request is one
    # row of 32 candidate slots, a 512-candidate one two rows of 256; full batches.
    shapes = {32: (32, 64, 32), 512: (16, 64, 256)}
    real_per_row = {32: 32, 512: 256}
    seconds = bare_forward(list(shapes.values()) if "forward" not in skip else [])
    seconds = {k: seconds.get(k, 1.0) for k in shapes.values()}
    forward = {}
    for m, shape in shapes.items():
        per_request = seconds[shape] / (shape[0] * real_per_row[m] / m)
        forward[m] = {"shape": shape, "batch_ms": round(seconds[shape] * 1e3, 3),
                      "F_ms_per_request": round(per_request * 1e3, 4),
                      "candidates_per_s": round(m / per_request)}  # fmt: skip
    # The server's engine at full batches: 32 requests of 32 candidates (a prefix call and
    # chunk calls of 32), 16 of 512 (prefixes, then chunks of 256).
    engine_requests = {32: 32, 512: 16}
    for m in shapes:
        per_request = bare_engine(m, engine_requests[m]) if "forward" not in skip else 1.0
        forward[m] |= {"one_pass_F_ms_per_request": forward[m].pop("F_ms_per_request"),
                       "one_pass_candidates_per_s": forward[m].pop("candidates_per_s"),
                       "engine_requests_per_batch": engine_requests[m],
                       "F_ms_per_request": round(per_request * 1e3, 4),
                       "candidates_per_s": round(m / per_request)}  # fmt: skip
    emit({"section": "forward", **{str(k): v for k, v in forward.items()}})

    small = request_file(32)
    if "empty" in skip:
        E = L = float("nan")
    else:
        E, L = measure_empty(small, args.seconds, forward)

    cache = {"PHOENIX_COMPILATION_CACHE": str(ROOT / ".bench-jax-cache")}
    # ghz sends one request over and over: with the prefix cache every call after the first
    # would skip its prefix pass, which requests of distinct users do not. Off, as in F.
    extra = ("--prefix-cache-bytes", "0", *args.server_args.split())
    modes = [("single", extra)]
    if "frontends" not in skip:
        modes.append(("frontend-workers-2", ("--frontend-workers", "2", *extra)))
    for mode, flags in modes:
        with ServerProcess(*flags, env=cache) as server:
            target = server.target
            for m in () if "served" in skip else (32, 512):
                served = closed_loop(target, request_file(m), m, args.seconds)
                served |= (
                    {
                        "over_E": round(served["requests_per_s"] / E, 3),
                        "over_L": round(served["requests_per_s"] / L, 3),
                    }
                    if m == 32
                    else {}
                )
                served["over_bare_forward"] = round(
                    served["candidates_per_s"] / forward[m]["candidates_per_s"], 3
                )
                served["over_one_pass_forward"] = round(
                    served["candidates_per_s"] / forward[m]["one_pass_candidates_per_s"], 3
                )
                emit({"section": "served", "mode": mode, "candidates": m, "loadgen": "ghz",
                      **served})  # fmt: skip
                rust = rust_loadgen(f"http://{target}", m, args.seconds)
                if rust:
                    emit({"section": "served", "mode": mode, "candidates": m,
                          "loadgen": "rust", **rust})  # fmt: skip
            if mode == "single" and "xai" not in skip:
                xai_cost(target, server, args.seconds)
            if "overload" not in skip:
                capacity = closed_loop(target, request_file(64), 64, args.seconds)
                emit({"section": "overload", "mode": mode, **overload(
                    target, server, args.overload_seconds, capacity["requests_per_s"])})  # fmt: skip
            if "ordinary" not in skip:
                emit({"section": "ordinary", "mode": mode, **ordinary(target, server)})
            if "mixed" not in skip:
                capacity = closed_loop(target, request_file(32), 32, args.seconds)
                emit({"section": "mixed", "mode": mode,
                      **mixed(target, args.seconds, capacity["requests_per_s"])})  # fmt: skip
            if mode == "single" and "door" not in skip:
                emit({"section": "door", "rate_rps": 1500, **door(request_file(64), args.seconds)})
            if mode == "single" and "heavy" not in skip:
                emit({"section": "heavy", **heavy(target, args.seconds)})
            m = server.metrics()
            batches = max(m["phoenix_batch_size_count"], 1)
            emit({"section": "server", "mode": mode,
                  "mean_requests_per_batch": round(m["phoenix_batch_size_sum"] / batches, 2),
                  "compilations": m["phoenix_compilations_total"]})  # fmt: skip
    if "buckets" not in skip:
        emit({"section": "buckets", **bucket_gain(extra, cache, args.seconds)})


if __name__ == "__main__":
    main()
