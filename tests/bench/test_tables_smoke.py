"""bench/tables.py on tiny tables: every section but the slow ones runs end to end and reports
consistent figures, so the benchmark cannot rot (speed is the full run's business)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_tables_benchmark_runs_on_tiny_tables(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Engine benchmarks\n\nkept as it is\n")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tables.py"), "--sizes", "3000",
         "--device-up-to", "3000", "--requests", "12", "--reload-rows", "2000",
         "--skip", "served,quality", "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    records = [json.loads(line) for line in lines[1:]]
    sections = {r.get("section") for r in records}
    assert {"bytes", "plan", "reload", "startup"} <= sections
    startup = {r["placement"]: r for r in records if r.get("section") == "startup"
               and "placement" in r}  # fmt: skip
    assert set(startup) == {"host", "device"}
    assert startup["host"]["rows_gathered_per_batch"] > 0
    assert startup["device"]["rows_gathered_per_batch"] == 0
    parity = next(r for r in records if "host_vs_device_max_abs" in r)
    assert parity["host_vs_device_max_abs"] <= 1e-5
    reload = next(r for r in records if r.get("section") == "reload")
    assert reload["serving_v2"]["rss_mb"] > 0
    text = md.read_text()
    assert text.startswith("# Engine benchmarks\n\nkept as it is\n")  # the rest is kept
    assert "## 6. Tables" in text and "| 3,000 |" in text
    # --render writes the same section again from the saved output.
    saved = tmp_path / "results.jsonl"
    saved.write_text(run.stdout)
    before = text
    md.write_text("# Engine benchmarks\n\nkept as it is\n")
    subprocess.run([sys.executable, str(ROOT / "bench" / "tables.py"), "--render", str(saved),
                    "--markdown", str(md)], cwd=ROOT, check=True, timeout=300)  # fmt: skip
    assert md.read_text() == before
