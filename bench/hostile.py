"""Untrusted bytes against the real server: what each hostile request costs it.

    python bench/hostile.py [--frontend-workers 0,2] [--slow-clients 100] [--json]

For each front mode, one server (a small batch plan, so warm-up takes seconds):

  cases       every case of the hostile corpus (tests/server/hostile.py: zstd bombs with and
              without declared sizes, declared 2^40 and 2^63, nested compression, Arrow streams
              with huge lengths in their headers, wide multi-hot lists, shared histories,
              garbage protobuf), one at a time: bytes sent, the status code, seconds
  at_once     the 8 costliest cases sent together, 4 times over, with a small Rank call every
              20 ms meanwhile: the small calls' worst latency
  memory      the server's processes' peak resident memory over both runs above, against their
              resident memory before (peaks reset through /proc/PID/clear_refs), summed
  slow        `--slow-clients` raw HTTP/2 clients each sending a Rank body one byte a second,
              opening another call the moment one is ended, beside 4 closed-loop clients of
              ordinary calls: the ordinary calls' codes, and the slow connections' calls
              refused at the door (`slow_body`)

Prints JSON lines (one per mode and section) and, unless --json, a markdown table a mode.
tests/server/test_hostile.py runs it and holds the figures to the issue's bounds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import select
import struct
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from server.config import Limits  # noqa: E402
from server.contracts.convert import raw_request_to_columnar_pb  # noqa: E402
from tests.helpers import random_request  # noqa: E402
from tests.server import h2raw  # noqa: E402
from tests.server.harness import ServerProcess  # noqa: E402
from tests.server.hostile import PREDICT, RANK, cases  # noqa: E402

PATHS = {
    RANK: "/phoenix.ranking.v1.RankingService/Rank",
    PREDICT: "/xai.recsys.v1.RecsysPredictor/PredictNextActions",
}
PLAN = ("--max-batch-size", "8", "--candidate-buckets", "8,32", "--max-batch-wait-ms", "5")
MiB = 2**20


def small_rank() -> bytes:
    raw = random_request(np.random.default_rng(3), 16, 32)
    return raw_request_to_columnar_pb(raw).SerializeToString()


def call(channel: grpc.Channel, method: str, data: bytes, timeout: float = 10.0
         ) -> tuple[str, float]:  # fmt: skip
    """(status code name, seconds) of one call of raw bytes."""
    started = time.monotonic()
    try:
        channel.unary_unary(PATHS[method])(data, timeout=timeout)
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    return code, time.monotonic() - started


# -- memory of the server's processes ------------------------------------------------------


def processes(pid: int) -> list[int]:
    """`pid` and its descendants (frontend workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peaks(pid: int) -> dict[int, int]:
    """Reset each process's peak resident memory (VmHWM) to its current; {pid: RSS KiB}."""
    rss = {}
    for p in processes(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
            rss[p] = _status_kib(p, "VmRSS")
        except OSError:
            pass
    return rss


def peak_growth_mib(before: dict[int, int]) -> float:
    """The sum over the processes of their peak since `reset_peaks` less their RSS then."""
    grown = 0
    for p, rss in before.items():
        try:
            grown += max(0, _status_kib(p, "VmHWM") - rss)
        except OSError:
            pass
    return round(grown / 1024, 1)


# -- sections ------------------------------------------------------------------------------


def run_cases(channel: grpc.Channel, corpus) -> list[dict]:
    out = []
    for case in corpus:
        code, seconds = call(channel, case.method, case.data)
        out.append({"case": case.name, "method": case.method, "bytes": len(case.data),
                    "code": code, "allowed": list(case.codes), "seconds": round(seconds, 3)})  # fmt: skip
    return out


def at_once(channel: grpc.Channel, corpus, measured: list[dict], rounds: int = 4) -> dict:
    """The 8 costliest cases together, `rounds` times, small Rank calls beside them."""
    costliest = sorted(measured, key=lambda r: -r["seconds"])[:8]
    chosen = [c for c in corpus if c.name in {r["case"] for r in costliest}]
    small, latencies, codes = small_rank(), [], []
    done = threading.Event()

    def beside() -> None:
        while not done.is_set():
            code, seconds = call(channel, RANK, small)
            latencies.append(seconds)
            codes.append(code)
            time.sleep(0.02)

    watcher = threading.Thread(target=beside)
    watcher.start()
    hostile = []
    with concurrent.futures.ThreadPoolExecutor(len(chosen)) as pool:
        for _ in range(rounds):
            hostile += pool.map(lambda c: call(channel, c.method, c.data)[0], chosen)
    done.set()
    watcher.join()
    return {"cases": [c.name for c in chosen], "hostile_codes": sorted(set(hostile)),
            "small_calls": len(latencies), "small_codes": sorted(set(codes)),
            "small_worst_ms": round(1000 * max(latencies), 1),
            "small_p50_ms": round(1000 * float(np.median(latencies)), 1)}  # fmt: skip


class SlowSender(threading.Thread):
    """A raw HTTP/2 client sending Rank bodies one byte every `interval` s, starting another
    call (another connection if the server closed it) the moment one is ended."""

    def __init__(self, port: int, stop: threading.Event, interval: float = 1.0):
        super().__init__(daemon=True)
        self.port, self.stop, self.interval = port, stop, interval
        self.calls = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._connection()
            except OSError:
                time.sleep(0.05)

    def _connection(self) -> None:
        conn = h2raw.RawH2(self.port, timeout=5)
        stream = 1
        try:
            while not self.stop.is_set():
                conn.start_call(PATHS[RANK], stream)
                self.calls += 1
                body = struct.pack(">BI", 0, 1000)  # a 1,000-byte message, never completed
                sent = 0
                while not self.stop.is_set():
                    if self._ended(conn, stream, self.interval):
                        break
                    piece = body[sent : sent + 1] or b"\0"
                    conn.sock.sendall(h2raw.frame(h2raw.DATA, 0, stream, piece))
                    sent += 1
                stream += 2
        finally:
            conn.close()

    @staticmethod
    def _ended(conn: h2raw.RawH2, stream: int, wait: float) -> bool:
        """Whether `stream` ends (or the connection closes) within `wait` seconds."""
        until = time.monotonic() + wait
        while (left := until - time.monotonic()) > 0:
            if not conn._buffer and not select.select([conn.sock], [], [], left)[0]:
                return False
            f = conn.read()
            if f is None:
                raise ConnectionError("closed")
            if f.type == h2raw.PING and not f.flags & h2raw.ACK:
                conn.sock.sendall(h2raw.frame(h2raw.PING, h2raw.ACK, 0, f.payload))
            if f.stream == stream and (f.type == 0x3 or f.flags & 0x1):  # RST_STREAM, END_STREAM
                return True
        return False


SLOW_BODY_REFUSALS = "phoenix_admission_refusals_total{reason=slow_body}"


def slow(server: ServerProcess, channel: grpc.Channel, clients: int, seconds: float) -> dict:
    stop = threading.Event()
    senders = [SlowSender(server.port, stop) for _ in range(clients)]
    for s in senders:
        s.start()
    server.wait_for_metrics(lambda m: m["phoenix_transport_calls_in_flight"] >= clients,
                            "the slow calls to hold their places", timeout=30)  # fmt: skip
    small, codes = small_rank(), []
    until = time.monotonic() + seconds

    def closed_loop() -> None:
        while time.monotonic() < until:
            codes.append(call(channel, RANK, small)[0])

    loops = [threading.Thread(target=closed_loop) for _ in range(4)]
    for t in loops:
        t.start()
    for t in loops:
        t.join()
    stop.set()
    for s in senders:
        s.join(10)
    ok = codes.count("OK")
    # Connections refused at the door for their slow bodies (frontends report every second).
    refused = server.wait_for_metrics(lambda m: SLOW_BODY_REFUSALS in m, "slow_body refusals")
    return {"slow_clients": clients, "slow_calls": sum(s.calls for s in senders),
            "refused_slow_body": refused[SLOW_BODY_REFUSALS],
            "ordinary_calls": len(codes), "ordinary_ok": ok,
            "ok_share": round(ok / max(1, len(codes)), 4),
            "codes": {c: codes.count(c) for c in sorted(set(codes))}}  # fmt: skip


def measure(workers: int, slow_clients: int, slow_seconds: float, env: dict) -> dict:
    corpus = cases(Limits())
    with ServerProcess(*PLAN, "--frontend-workers", str(workers), env=env) as server:
        channel = server.client.channel
        small = small_rank()
        for _ in range(50):  # warm: the paths ordinary calls take
            call(channel, RANK, small)
        before = reset_peaks(server.proc.pid)
        rss_before = round(sum(before.values()) / 1024, 1)
        measured = run_cases(channel, corpus)
        together = at_once(channel, corpus, measured)
        grown = peak_growth_mib(before)
        slow_result = slow(server, channel, slow_clients, slow_seconds) if slow_clients else None
        alive = server.proc.poll() is None and server.client.health() == "SERVING"
    return {"frontend_workers": workers, "cases": measured, "at_once": together,
            "rss_before_mib": rss_before, "peak_growth_mib": grown, "slow": slow_result,
            "alive_and_serving": alive}  # fmt: skip


def markdown(result: dict) -> str:
    lines = [f"### frontend workers: {result['frontend_workers']}", "",
             "| case | bytes | code | seconds |", "|---|---|---|---|"]  # fmt: skip
    for r in result["cases"]:
        lines.append(f"| {r['case']} | {r['bytes']:,} | {r['code']} | {r['seconds']:.3f} |")
    a = result["at_once"]
    lines += ["", f"RSS before: {result['rss_before_mib']} MiB; peak growth over every case "
              f"and the 8-at-once run: {result['peak_growth_mib']} MiB. A small Rank beside 8 "
              f"hostile calls at once: worst {a['small_worst_ms']} ms, p50 {a['small_p50_ms']} "
              f"ms over {a['small_calls']} calls ({', '.join(a['small_codes'])})."]  # fmt: skip
    if result["slow"]:
        s = result["slow"]
        lines.append(f"Beside {s['slow_clients']} slow-body clients ({s['slow_calls']:,} slow "
                     f"calls, {s['refused_slow_body']:,.0f} of them refused at the door): "
                     f"{s['ordinary_ok']} of {s['ordinary_calls']} ordinary calls OK "
                     f"({100 * s['ok_share']:.1f}%).")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frontend-workers", default="0,2")
    parser.add_argument("--slow-clients", type=int, default=100)
    parser.add_argument("--slow-seconds", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    args = parser.parse_args()
    env = {}
    if os.environ.get("PHOENIX_COMPILATION_CACHE"):
        env["PHOENIX_COMPILATION_CACHE"] = os.environ["PHOENIX_COMPILATION_CACHE"]
    for workers in (int(w) for w in args.frontend_workers.split(",")):
        result = measure(workers, args.slow_clients, args.slow_seconds, env)
        print(json.dumps(result), flush=True)
        if not args.json:
            print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
