"""Untrusted bytes against the real server, in both front modes (bench/hostile.py measures;
this holds its figures to the bounds): every hostile case is refused with its code within a
second, the server's processes' peak memory grows by at most 256 MiB over all of them, a small
call beside 8 hostile ones at once is answered within 500 ms, and beside 100 clients trickling
their bodies a byte a second (re-sending the instant they are ended: their connections are
then refused at the door) at least 95% of ordinary calls are OK."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "frontend-workers"])
def test_hostile_requests_cost_the_server_little_and_harm_no_other_call(compilation_cache, workers):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hostile.py"), "--frontend-workers", str(workers),
         "--slow-clients", "100", "--slow-seconds", "10", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, **compilation_cache},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.splitlines()[-1])
    for case in result["cases"]:
        assert case["code"] in case["allowed"], case
        assert case["seconds"] < 1.0, case
    assert result["peak_growth_mib"] <= 256, result["peak_growth_mib"]
    together = result["at_once"]
    assert together["small_codes"] == ["OK"] and together["small_worst_ms"] < 500, together
    assert set(together["hostile_codes"]) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "OK"}
    slow = result["slow"]
    assert slow["ordinary_calls"] > 100 and slow["ok_share"] >= 0.95, slow
    assert slow["refused_slow_body"] > 0, slow  # their re-sends are refused at the door
    assert result["alive_and_serving"]
