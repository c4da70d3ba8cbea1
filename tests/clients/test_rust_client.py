"""The Rust home-mixer client crate, built from scratch and tested against the real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.server.harness import phoenix_ranker

pytestmark = [pytest.mark.rust, pytest.mark.slow]
CRATE = ROOT / "clients" / "rust"


def cargo() -> str:
    found = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(found).exists():
        pytest.fail("cargo is required (rustup installs it; .ci/run does on machines without it)")
    return found


def test_cargo_test_against_the_live_server(compilation_cache):
    command = phoenix_ranker()
    assert len(command) == 1, "the Rust tests start the server through the installed console script"
    env = {
        **os.environ,
        **compilation_cache,
        "PHOENIX_RANKER": command[0],
        "PHOENIX_PYTHON": sys.executable,
        "CARGO_TERM_COLOR": "never",
        # The servers the crate's tests start need only a few batch shapes: seconds of warm-up.
        "PHOENIX_MAX_BATCH_SIZE": "8",
        "PHOENIX_CANDIDATE_BUCKETS": "8,32",
    }
    started = time.monotonic()
    build = subprocess.run([cargo(), "test", "--locked", "--no-run"], cwd=CRATE, env=env,
                           capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert build.returncode == 0, build.stderr[-5000:]
    print(f"cargo build of the client crate and its tests: {time.monotonic() - started:.0f}s")
    run = subprocess.run([cargo(), "test", "--locked"], cwd=CRATE, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert "test result: ok" in output
    for name in (
        "contract_against_a_live_server",
        "predict_next_actions_scores_as_rank",
        "a_stopped_server_is_unavailable_after_the_retries",
        "tls_server_is_verified_against_the_ca",
        "tls_mutual_requires_a_client_certificate",
        "only_unavailable_and_resource_exhausted_short_of_a_size_limit_are_retried",
        "fields_follow_names_not_positions",
        "splitmix64_matches_the_hashing_contract",
    ):
        assert f"{name} ... ok" in output, name  # fmt: skip
