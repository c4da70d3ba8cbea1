"""bench/engine.py --smoke: the engine benchmark runs end to end on tiny sizes, so it cannot rot.

It checks that every section ran and reported consistent figures, not how fast anything is
(speed is the full run's business: `python bench/engine.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_engine_benchmark_runs_in_smoke_mode(tmp_path):
    out, md = tmp_path / "engine.json", tmp_path / "BENCHMARKS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine.py"), "--smoke", "--out", str(out),
         "--markdown", str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["machine"]["matmul_peak_gflops"] > 0 and report["machine"]["cores"] >= 1
    assert {r["call"] for r in report["forward"]} == {"prefix", "chunk"}
    assert all(r["ms"] > 0 and 0 < r["utilisation"] for r in report["forward"])
    for r in report["one_user"]:  # every engine scored the same logits
        for engine in ("windows", "ref_windows", "dense_row"):
            assert r[f"{engine}_max_abs_diff"] <= 1e-4, (engine, r)
    assert all(r["hit_ms"] > 0 and r["miss_ms"] > 0 for r in report["cache"])
    states = {(r["model"], r["compilation_cache"]) for r in report["warmup"]}
    assert states == {("default", "cold"), ("default", "cached")}
    assert all(r["shapes_at_serving"] < r["shapes"] for r in report["warmup"])
    text = md.read_text()
    assert "Matmul peak" in text and "One user, many candidates" in text
