"""Embedding tables at production size: storage, start-up, memory, served cost and quality.

    python bench/tables.py [--sizes 100000,500000,2000000] [--device-up-to 500000]
                           [--requests 1000] [--seconds 10] [--skip bytes,startup,...]
                           [--markdown BENCHMARKS.md]
    python bench/tables.py --render RESULTS.jsonl   # the markdown again, from saved output

The figures go to stdout (JSON lines) and, as its section "Tables", to BENCHMARKS.md (the
section from `MARKER` to the end of the file; bench/engine.py keeps it when it rewrites the
rest).

Sections (JSON lines, one per figure):

  bytes       bytes per row of each table dtype at the default (64), nano (512) and xAI's
              published (1024) widths, and the default model's file in each dtype
  startup     nano-shaped checkpoints with 3 tables of N rows (float32, `phoenix-ranker
              init`), served with --table-placement host (and device up to --device-up-to):
              seconds from start to SERVING, resident memory (anonymous and file-backed) after
              SERVING and after --requests requests, and the max logit difference between
              the two placements where both ran
  reload      host placement from --checkpoint-dir with nano tables of --reload-rows rows:
              resident memory serving version 1, then after version 2 (another file of the
              same size) has replaced it (a reload maps the new file; nothing is copied)
  served      the default model, closed loop (ghz, 32 clients), 32 and 512 candidates, device
              then host placement: requests/s and the host/device ratio
  quality     the default model's held-out evaluation (`phoenix-ranker eval`) with float32,
              bfloat16 and int8 tables: AUC per action and its change; logit differences on
              synthetic requests
  plan        on paper: xAI's published shape on 1, 2 and 8 H200s, and the gather bandwidth a
              stated request rate needs

Everything shares the machine's cores: compare within a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from bench.engine import TABLES_MARKER as MARKER  # noqa: E402
from bench.host_path import closed_loop, request_file  # noqa: E402
from bench.host_path import emit as _emit  # noqa: E402
from model.checkpoint import default_checkpoint_path, load_checkpoint  # noqa: E402
from model.config import NANO, PhoenixModelConfig  # noqa: E402
from model.tables import TABLE_DTYPES, bytes_per_row  # noqa: E402
from server.contracts.convert import logits_from_pb, raw_request_to_pb  # noqa: E402
from tests.helpers import random_request  # noqa: E402
from tests.server.harness import ServerProcess, phoenix_ranker  # noqa: E402
from training.manifest import manifest_path  # noqa: E402

RECORDS: list[dict] = []


def emit(record: dict) -> dict:
    RECORDS.append(record)
    return _emit(record)


WORK = Path(tempfile.mkdtemp(prefix="phoenix-tables-", dir=os.environ.get("TMPDIR", "/tmp")))
CACHE = {"PHOENIX_COMPILATION_CACHE": str(ROOT / ".bench-jax-cache")}
# Small batch shapes for the nano model on a CPU: start-up measures the tables, not XLA.
NANO_PLAN = ("--max-batch-size", "4", "--candidate-buckets", "16", "--history-buckets", "32",
             "--max-batch-wait-ms", "2")  # fmt: skip

# xAI's published production shape (phoenix/README.md of the x-algorithm release).
XAI_ROWS = {"user": 100_000_000, "post": 100_000_000, "author": 30_000_000}
XAI_WIDTH = 1024
H200_BYTES = 141e9
FIT_SHARE = 0.75  # of a device's memory, for its share of the tables


def phoenix(*args: str) -> str:
    return subprocess.run([*phoenix_ranker(), *args], check=True, capture_output=True,
                          text=True, cwd=ROOT).stdout  # fmt: skip


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of `pid` and its children: total, anonymous and file-backed, in MB."""
    out = {"rss_mb": 0.0, "anon_mb": 0.0, "file_mb": 0.0}
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], text=True,
                                                   capture_output=True).stdout.split()]  # fmt: skip
    for p in pids:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines()
        )
        for key, name in (("rss_mb", "VmRSS"), ("anon_mb", "RssAnon"), ("file_mb", "RssFile")):
            out[key] += int(fields[name].split()[0]) / 1024
    return {k: round(v) for k, v in out.items()}


def section_bytes() -> None:
    for width in (64, 512, XAI_WIDTH):
        emit({"section": "bytes", "width": width,
              **{d: bytes_per_row(d, width) for d in TABLE_DTYPES}})  # fmt: skip
    for dtype in TABLE_DTYPES:
        path = _default_in(dtype)
        ckpt = load_checkpoint(path, verify_tables=False)
        emit({"section": "bytes", "default_model": dtype, "file_bytes": path.stat().st_size,
              "table_bytes": ckpt.table_bytes})  # fmt: skip


def _default_in(dtype: str) -> Path:
    if dtype == "float32":
        return default_checkpoint_path()
    out = WORK / f"default-{dtype}.safetensors"
    if not out.exists():
        phoenix("quantize", str(default_checkpoint_path()), str(out), "--table-dtype", dtype)
    return out


def _load(server: ServerProcess, requests: int, clients: int = 4) -> None:
    """`requests` calls from `clients` threads, distinct users (no prefix reuse)."""
    rng = np.random.default_rng(1)
    pbs = [raw_request_to_pb(random_request(rng, 24, 12)) for _ in range(64)]
    counter = iter(range(requests))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            while True:  # refused by admission (a burst): retry after a moment
                try:
                    server.client.rank(pbs[i % len(pbs)], timeout=120)
                    break
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    time.sleep(0.05)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def section_startup(sizes: list[int], device_up_to: int, requests: int) -> None:
    probe = raw_request_to_pb(random_request(np.random.default_rng(9), 24, 12))
    for rows in sizes:
        path = WORK / f"nano-{rows}.safetensors"
        began = time.monotonic()
        phoenix("init", "--out", str(path), "--preset", "nano", "--user-rows", str(rows),
                "--post-rows", str(rows), "--author-rows", str(rows))  # fmt: skip
        made = time.monotonic() - began
        ckpt = load_checkpoint(path, verify_tables=False)
        logits = {}
        for placement in ("host", "device") if rows <= device_up_to else ("host",):
            subprocess.run(["sync"], check=True)
            began = time.monotonic()
            with ServerProcess(*NANO_PLAN, "--checkpoint", str(path), "--table-placement",
                               placement, env=CACHE, all_shapes=False) as server:  # fmt: skip
                serving = time.monotonic() - began
                after_start = memory_mb(server.proc.pid)
                logits[placement] = logits_from_pb(server.client.rank(probe, timeout=120))
                began = time.monotonic()
                _load(server, requests)
                rate = requests / (time.monotonic() - began)
                after_load = memory_mb(server.proc.pid)
                metrics = server.metrics()
            emit({"section": "startup", "rows_per_table": rows, "placement": placement,
                  "table_gb": round(ckpt.table_bytes / 1e9, 2), "init_s": round(made, 1),
                  "serving_s": round(serving, 1), "after_serving": after_start,
                  f"after_{requests}_requests": after_load, "requests_per_s": round(rate, 1),
                  "rows_gathered_per_batch": round(
                      metrics.get("phoenix_table_rows_gathered_sum", 0)
                      / max(1, metrics.get("phoenix_table_rows_gathered_count", 0)), 1)})  # fmt: skip
        if len(logits) == 2:
            diff = float(np.abs(logits["host"] - logits["device"]).max())
            emit({"section": "startup", "rows_per_table": rows, "host_vs_device_max_abs": diff})
        del ckpt
        path.unlink()


def section_reload(rows: int, requests: int) -> None:
    versions = WORK / "versions"
    versions.mkdir()
    for seed in (1, 2):
        phoenix("init", "--out", str(WORK / f"v{seed}.safetensors"), "--preset", "nano",
                "--user-rows", str(rows), "--post-rows", str(rows), "--author-rows", str(rows),
                "--seed", str(seed))  # fmt: skip
    os.replace(WORK / "v1.safetensors", versions / "1.safetensors")
    with ServerProcess(*NANO_PLAN, "--checkpoint-dir", str(versions), "--table-placement",
                       "host", "--poll-seconds", "0.5", env=CACHE, all_shapes=False) as server:  # fmt: skip
        _load(server, requests)
        before = memory_mb(server.proc.pid)
        os.replace(WORK / "v2.safetensors", versions / "2.safetensors")
        began = time.monotonic()
        while server.client.model_info().model_version != "2":
            time.sleep(0.1)
        swapped = time.monotonic() - began
        _load(server, requests)
        after = memory_mb(server.proc.pid)
    table_gb = load_checkpoint(versions / "2.safetensors", verify_tables=False).table_bytes / 1e9
    emit({"section": "reload", "rows_per_table": rows, "table_gb": round(table_gb, 2),
          "serving_v1": before, "serving_v2": after, "swap_s": round(swapped, 1)})  # fmt: skip
    for f in versions.iterdir():
        f.unlink()


def section_served(seconds: float) -> None:
    rates = {}
    for placement in ("device", "host"):
        with ServerProcess("--table-placement", placement, "--prefix-cache-bytes", "0",
                           env=CACHE) as server:  # fmt: skip
            for m in (32, 512):
                r = closed_loop(server.target, request_file(m), m, seconds)
                rates[placement, m] = r["requests_per_s"]
                emit({"section": "served", "placement": placement, "candidates": m, **r})
    for m in (32, 512):
        emit({"section": "served", "candidates": m,
              "host_over_device": round(rates["host", m] / rates["device", m], 3)})  # fmt: skip


def section_quality() -> None:
    aucs = {}
    manifest = manifest_path(default_checkpoint_path())  # the world it was trained on
    for dtype in TABLE_DTYPES:
        args = ["eval", "--json", "--checkpoint", str(_default_in(dtype))]
        if dtype != "float32":
            args += ["--manifest", str(manifest)]
        aucs[dtype] = {a: r["model"] for a, r in json.loads(phoenix(*args)).items()}
    for dtype in ("bfloat16", "int8"):
        change = {a: round(aucs[dtype][a] - v, 5) for a, v in aucs["float32"].items()
                  if v == v}  # fmt: skip
        emit({"section": "quality", "table_dtype": dtype, "auc_change": change,
              "max_abs_auc_change": max(abs(v) for v in change.values())})  # fmt: skip
    emit({"section": "quality", "auc": aucs})
    from model.ranker import Ranker

    rng = np.random.default_rng(3)
    raws = [random_request(rng, int(rng.integers(0, 64)), 32) for _ in range(64)]
    want = np.concatenate(Ranker.from_checkpoint(default_checkpoint_path()).logits_many(raws))
    for dtype in ("bfloat16", "int8"):
        got = np.concatenate(Ranker.from_checkpoint(_default_in(dtype)).logits_many(raws))
        emit({"section": "quality", "table_dtype": dtype, "logits": len(want.ravel()),
              "max_abs_logit_diff": round(float(np.abs(got - want).max()), 5),
              "mean_abs_logit_diff": round(float(np.abs(got - want).mean()), 6)})  # fmt: skip


def section_plan(rate: float = 1000.0, candidates: int = 1000) -> None:
    """xAI's shape on 1, 2 and 8 H200s, and the gather traffic at `rate` requests/s of
    `candidates` candidates each with the nano config's history and hash counts."""
    config = PhoenixModelConfig.from_dict(NANO)
    h = config.hash_config
    rows = sum(XAI_ROWS.values())
    for dtype in TABLE_DTYPES:
        total = rows * bytes_per_row(dtype, XAI_WIDTH)
        emit({"section": "plan", "table_dtype": dtype, "table_gb": round(total / 1e9, 1),
              **{f"per_device_gb_rows_sharded_{n}": round(total / n / 1e9, 1)
                 for n in (1, 2, 8)}})  # fmt: skip
    per_request = (h.num_user_hashes
                   + config.history_seq_len * (h.num_item_hashes + h.num_author_hashes)
                   + candidates * (h.num_item_hashes + h.num_author_hashes))  # fmt: skip
    for dtype in ("bfloat16", "float32"):  # what crosses to the device (int8 is widened)
        nbytes = per_request * XAI_WIDTH * (2 if dtype == "bfloat16" else 4)
        emit({"section": "plan", "gather_rows_per_request": per_request, "sent_as": dtype,
              "mb_per_request": round(nbytes / 1e6, 2), "requests_per_s": rate,
              "gb_per_s": round(nbytes * rate / 1e9, 2)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,500000,2000000")
    parser.add_argument("--device-up-to", type=int, default=500_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--reload-rows", type=int, default=500_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip", default="")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--render", type=Path, help="only write the markdown of saved records")
    args = parser.parse_args()
    if args.render:
        lines = args.render.read_text().splitlines()
        run, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
        write_section(args.markdown, markdown(records, run["command"], run["at"]))
        return
    skip = set(args.skip.split(","))
    command = "python bench/tables.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(json.dumps({"command": command.strip(), "at": stamp}), flush=True)
    emit({"machine": platform.machine(), "cpus": os.cpu_count(),
          "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
          "python": platform.python_version()})  # fmt: skip
    if "bytes" not in skip:
        section_bytes()
    if "plan" not in skip:
        section_plan()
    if "quality" not in skip:
        section_quality()
    if "served" not in skip:
        section_served(args.seconds)
    if "reload" not in skip:
        section_reload(args.reload_rows, args.requests)
    if "startup" not in skip:
        sizes = [int(s) for s in args.sizes.split(",")]
        section_startup(sizes, args.device_up_to, args.requests)
    write_section(args.markdown, markdown(RECORDS, command.strip(), stamp))
    shutil.rmtree(WORK, ignore_errors=True)


def write_section(path: Path, section: str) -> None:
    """Replace the tables section of `path` (from MARKER to the end), or append it."""
    text = path.read_text() if path.exists() else ""
    text = text.split(MARKER)[0].rstrip("\n")
    path.write_text(f"{text}\n\n{MARKER}\n{section}\n")


def markdown(records: list[dict], command: str, stamp: str) -> str:
    """The section: the headline figures, tables of the rest, then every record."""
    machine = records[0]
    lines = ["## 6. Tables: dtypes, placement, memory (`bench/tables.py`)", "",
             f"Generated by `{command}` on {stamp}; {machine['cpus']} cores, "
             f"{machine['ram_gb']} GiB. One run: compare within it.", ""]  # fmt: skip
    by = lambda name: [r for r in records if r.get("section") == name]  # noqa: E731
    headlines = []
    for r in records:
        if "host_over_device" in r:
            headlines.append(f"served, host placement against device, {r['candidates']} "
                             f"candidates (default model, ghz closed loop): "
                             f"**{r['host_over_device']}x**")  # fmt: skip
        elif "host_vs_device_max_abs" in r:
            headlines.append(f"logits, host against device placement, {r['rows_per_table']:,} "
                             f"rows a table: max difference {r['host_vs_device_max_abs']}")  # fmt: skip
        elif "max_abs_logit_diff" in r:
            headlines.append(f"{r['table_dtype']} tables against float32, {r['logits']:,} "
                             f"logits: max difference {r['max_abs_logit_diff']}, mean "
                             f"{r['mean_abs_logit_diff']}; largest AUC change "
                             + str(next(q["max_abs_auc_change"] for q in records
                                        if q.get("auc_change") and
                                        q["table_dtype"] == r["table_dtype"])))  # fmt: skip
        elif r.get("section") == "reload":
            headlines.append(f"reload, host placement, {r['table_gb']} GB of tables a "
                             f"version: resident {r['serving_v1']['rss_mb']} MB serving "
                             f"version 1, {r['serving_v2']['rss_mb']} MB serving version 2 "
                             f"(swapped in {r['swap_s']} s)")  # fmt: skip
    lines += [f"- {h}" for h in headlines] + ([""] if headlines else [])
    widths = [r for r in by("bytes") if "width" in r]
    if widths:
        lines += ["Bytes per table row (int8: the row and its float32 scale):", "",
                  "| width D | " + " | ".join(TABLE_DTYPES) + " |",
                  "|---:|" + "---:|" * len(TABLE_DTYPES)]  # fmt: skip
        lines += [f"| {r['width']} | " + " | ".join(str(r[d]) for d in TABLE_DTYPES) + " |"
                  for r in widths]  # fmt: skip
        lines.append("")
    plan = [r for r in by("plan") if "table_dtype" in r]
    if plan:
        lines += [f"xAI's published shape ({', '.join(f'{n:,} {t}s' for t, n in XAI_ROWS.items())}"
                  f" x {XAI_WIDTH}) on H200s ({H200_BYTES / 1e9:.0f} GB): a table split by rows "
                  f"fits where its share is at most {FIT_SHARE:.0%} of a device (the rest: dense "
                  "weights, prefix slabs, activations); otherwise host placement, which needs "
                  "the table bytes in host RAM and sends only gathered rows.", "",
                  "| table dtype | tables GB | 1 H200 | 2 H200s | 8 H200s |",
                  "|---|---:|---|---|---|"]  # fmt: skip
        for r in plan:
            cells = []
            for n in (1, 2, 8):
                share = r[f"per_device_gb_rows_sharded_{n}"]
                fits = share <= FIT_SHARE * H200_BYTES / 1e9
                cells.append(f"device, split by rows: {share} GB a device" if fits
                             else f"host: {r['table_gb']} GB of host RAM")  # fmt: skip
            lines.append(f"| {r['table_dtype']} | {r['table_gb']} | " + " | ".join(cells) + " |")
        for r in by("plan"):
            if "gb_per_s" in r:
                lines.append(f"\nHost placement's traffic: at most {r['gather_rows_per_request']:,} "
                             f"rows a request (nano's history of 1,022 events, 1,000 candidates, "
                             f"2 hashes per id), {r['mb_per_request']} MB as {r['sent_as']}; "
                             f"{r['requests_per_s']:.0f} requests/s need {r['gb_per_s']} GB/s "
                             "host-to-device"
                             + (" (int8 tables travel as float32 rows, widened on the host)."
                                if r["sent_as"] == "float32" else "."))  # fmt: skip
        lines.append("")
    startup = [r for r in by("startup") if "placement" in r]
    if startup:
        lines += ["| rows per table | tables GB (f32) | placement | to SERVING s | RSS after "
                  "SERVING MB (anon / file) | RSS after requests MB (anon / file) | requests/s |",
                  "|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in startup:
            after = next(v for k, v in r.items() if k.startswith("after_") and k != "after_serving")
            s, a = r["after_serving"], after
            lines.append(f"| {r['rows_per_table']:,} | {r['table_gb']} | {r['placement']} | "
                         f"{r['serving_s']} | {s['rss_mb']} ({s['anon_mb']} / {s['file_mb']}) | "
                         f"{a['rss_mb']} ({a['anon_mb']} / {a['file_mb']}) | "
                         f"{r['requests_per_s']} |")  # fmt: skip
        lines.append("")
    served = [r for r in by("served") if "placement" in r]
    if served:
        lines += ["| placement | candidates | requests/s | p50 ms | p99 ms |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r['placement']} | {r['candidates']} | {r['requests_per_s']} | "
                  f"{r['p50_ms']} | {r['p99_ms']} |" for r in served]  # fmt: skip
        lines.append("")
    quality = [r for r in by("quality") if "auc_change" in r]
    auc = next((r["auc"] for r in by("quality") if "auc" in r), None)
    if quality and auc:
        actions = list(auc["float32"])
        lines += ["| action | AUC float32 | bfloat16 change | int8 change |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        change = {r["table_dtype"]: r["auc_change"] for r in quality}
        for a in actions:
            if a in change["int8"]:
                lines.append(f"| {a} | {auc['float32'][a]:.4f} | {change['bfloat16'][a]:+.5f} "
                             f"| {change['int8'][a]:+.5f} |")  # fmt: skip
        lines.append("")
    lines += ["Every record:", "", "```", *map(json.dumps, records), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
