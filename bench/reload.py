"""Zero-downtime reload, measured: a new version dropped into --checkpoint-dir under load.

    python bench/reload.py [--seconds-before 8] [--seconds-after 8] [--clients 16]
                           [--candidates 32] [--swaps 3] [--small-plan]

The server serves version 1 of the default model from a checkpoint directory while `--clients`
closed-loop clients (threads, one call at a time, 10 s deadlines) send `--candidates`-candidate
requests. Each swap copies a new version in (temporary name, then rename), and the script
prints (JSON lines, then a summary):

  drop_to_serving_s  from the rename to the first response that names the new version
  p99 before / during / after  client latency of calls that started in the `--seconds-before`
                     before the drop, between the drop and 1 s after the first new response,
                     and after that
  rss                the server's resident memory (VmRSS, sampled every 10 ms): before the
                     drop, its peak during the swap, and once the old version is freed
  failed             calls that did not end OK (must be 0)

Compare within one run: the machine's cores are shared by the server and the clients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from model.checkpoint import default_checkpoint_path, load_checkpoint, save_checkpoint  # noqa: E402
from model.params import flatten, unflatten  # noqa: E402
from request.raw import RawRequest  # noqa: E402
from request.synthetic import synthetic_request_dict  # noqa: E402
from server.contracts.convert import raw_request_to_pb  # noqa: E402
from server.rpc import ranking_pb2 as pb  # noqa: E402
from tests.server.harness import ServerProcess  # noqa: E402

RANK = "/phoenix.ranking.v1.RankingService/Rank"


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def new_version(source: Path, out: Path, seed: int) -> Path:
    """The source model with other weights (same config: a weights-only release)."""
    checkpoint = load_checkpoint(source)
    rng = np.random.default_rng(seed)
    flat = {k: np.asarray(v) + rng.normal(0, 0.02, v.shape).astype(np.float32)
            for k, v in flatten(checkpoint.state.params).items()}  # fmt: skip
    save_checkpoint(out, unflatten(flat), checkpoint.config, f"bench-{seed}")
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """(time, VmRSS KiB) of a process every 10 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.samples.append((time.monotonic(), rss_kib(self.pid)))

    def peak(self, start: float, end: float) -> int:
        return max((r for t, r in self.samples if start <= t <= end), default=0)

    def last(self) -> int:
        return self.samples[-1][1]


class Clients:
    """Closed-loop clients recording (start, seconds, model_version or status name)."""

    def __init__(self, target: str, payload: bytes, clients: int):
        self.target, self.payload = target, payload
        self.calls: list[tuple[float, float, str]] = []
        self.lock, self.done = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            rank = channel.unary_unary(RANK, response_deserializer=pb.RankResponse.FromString)
            while not self.done.is_set():
                started = time.monotonic()
                try:
                    outcome = rank(self.payload, timeout=10).model_version
                except grpc.RpcError as e:
                    outcome = e.code().name
                with self.lock:
                    self.calls.append((started, time.monotonic() - started, outcome))

    def first_response_of(self, version: str, after: float) -> float | None:
        with self.lock:
            ends = [s + d for s, d, v in self.calls if v == version and s + d >= after]
        return min(ends) if ends else None

    def p99_ms(self, start: float, end: float) -> float | None:
        with self.lock:
            lat = [d for s, d, v in self.calls if start <= s < end]
        return round(float(np.percentile(lat, 99)) * 1000, 2) if lat else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-before", type=float, default=8.0)
    parser.add_argument("--seconds-after", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--small-plan", action="store_true",
                        help="8 rows, candidate buckets 8,32: seconds of warm-up, not a minute")  # fmt: skip
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="phoenix-reload-"))
    versions = work / "versions"
    versions.mkdir()
    shutil.copyfile(default_checkpoint_path(), versions / "1.safetensors")
    releases = [new_version(default_checkpoint_path(), work / f"v{n}.safetensors", n)
                for n in range(2, 2 + args.swaps)]  # fmt: skip
    plan = ("--max-batch-size", "8", "--candidate-buckets", "8,32") if args.small_plan else ()
    raw = RawRequest.from_dict(synthetic_request_dict(5, 64, args.candidates, 16))
    payload = raw_request_to_pb(raw).SerializeToString()
    results = []
    with ServerProcess(*plan, "--checkpoint-dir", str(versions), "--poll-seconds", "0.1") as server:
        sampler = Sampler(server.proc.pid)
        sampler.start()
        clients = Clients(server.target, payload, args.clients)
        for t in clients.threads:
            t.start()
        for number, release in enumerate(releases, start=2):
            time.sleep(args.seconds_before)  # load at steady state before the drop
            rss_before = sampler.last()
            tmp = versions / f".{number}.tmp"
            shutil.copyfile(release, tmp)
            dropped = time.monotonic()
            os.replace(tmp, versions / f"{number}.safetensors")
            serving_at = None
            while serving_at is None and time.monotonic() < dropped + 60:
                time.sleep(0.01)
                serving_at = clients.first_response_of(str(number), dropped)
            swap_end = (serving_at or dropped) + 1.0
            time.sleep(max(0.0, swap_end - time.monotonic()) + args.seconds_after)
            metrics = server.metrics()
            results.append(emit({
                "swap": f"{number - 1}->{number}",
                "drop_to_serving_s": None if serving_at is None else round(serving_at - dropped, 3),
                "p99_ms_before": clients.p99_ms(dropped - args.seconds_before, dropped),
                "p99_ms_during": clients.p99_ms(dropped, swap_end),
                "p99_ms_after": clients.p99_ms(swap_end, swap_end + args.seconds_after),
                "rss_mib_before": round(rss_before / 1024, 1),
                "rss_mib_peak_during": round(sampler.peak(dropped, swap_end) / 1024, 1),
                "rss_mib_after": round(sampler.last() / 1024, 1),
                "models_resident_after": metrics["phoenix_models_resident"],
                "compilations": metrics["phoenix_compilations_total"],
            }))  # fmt: skip
        clients.done.set()
        for t in clients.threads:
            t.join(15)
        sampler.stop.set()
    outcomes: dict[str, int] = {}
    for _, _, outcome in clients.calls:
        key = "OK" if outcome.isdigit() else outcome
        outcomes[key] = outcomes.get(key, 0) + 1
    failed = sum(n for k, n in outcomes.items() if k != "OK")
    emit({"calls": len(clients.calls), "outcomes": outcomes, "failed": failed})
    print(f"\n{args.swaps} swaps under {args.clients} closed-loop clients "
          f"({args.candidates} candidates), {len(clients.calls)} calls, {failed} failed")  # fmt: skip
    for r in results:
        print(f"  {r['swap']}: serving {r['drop_to_serving_s']} s after the drop; p99 "
              f"{r['p99_ms_before']} ms before, {r['p99_ms_during']} during, "
              f"{r['p99_ms_after']} after; RSS {r['rss_mib_before']} MiB, peak "
              f"{r['rss_mib_peak_during']}, after {r['rss_mib_after']}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
