"""Facts the Python and Rust sides both state, checked to agree: the synthetic request for a
seed (request/synthetic.py's spec), the default ranking weights (model/scoring.py) and our
actions' xAI ActionNames (server/contracts/xai.py).

The Rust side is `rank --print-request` of the client crate, in the debug build that
tests/clients/test_rust_client.py's `cargo test` has already compiled the dependencies of.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from request.synthetic import SplitMix64, synthetic_request_dict
from tests.conftest import ROOT

# (seed, history, candidates, surfaces): the --print-request defaults, no history, no
# candidates, one surface, a seed whose state wraps at once, and more than 19 * 10 action draws.
CASES = [
    (7, 64, 12, 16),
    (0, 0, 3, 16),
    (11, 40, 45, 4),
    (1, 5, 0, 1),
    (2**64 - 1, 3, 2, 7),
    (123456789, 200, 30, 16),
]


@pytest.fixture(scope="module")
def rank_binary() -> Path:
    # Imported here so that the pure-Python tests below do not depend on the server package.
    from tests.clients.test_rust_client import CRATE, cargo

    build = subprocess.run(
        [cargo(), "build", "--locked", "--bin", "rank", "--message-format=json"],
        cwd=CRATE,
        env={**os.environ, "CARGO_TERM_COLOR": "never"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    for line in build.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "rank":
            if message.get("executable"):
                return Path(message["executable"])
    pytest.fail(f"cargo reported no rank executable:\n{build.stdout[-3000:]}")


@pytest.mark.rust
@pytest.mark.parametrize(("seed", "history", "candidates", "surfaces"), CASES)
def test_rust_prints_the_python_request(rank_binary, seed, history, candidates, surfaces):
    flags = {
        "--seed": seed,
        "--history": history,
        "--candidates": candidates,
        "--surfaces": surfaces,
    }
    args = [str(rank_binary), "--print-request"]
    for flag, value in flags.items():
        args += [flag, str(value)]
    # No server runs: --print-request must not contact one (this target refuses connections).
    env = {**os.environ, "PHOENIX_TARGET": "127.0.0.1:1"}
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()) == 1, "one JSON object on one line"
    assert json.loads(run.stdout) == synthetic_request_dict(seed, history, candidates, surfaces)


@pytest.mark.rust
def test_rust_print_request_defaults(rank_binary):
    run = subprocess.run([str(rank_binary), "--print-request"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PHOENIX_TARGET": "127.0.0.1:1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == synthetic_request_dict(7, 64, 12, 16)


@pytest.mark.rust
def test_rust_default_weights_are_pythons(rank_binary):
    from model.scoring import DEFAULT_WEIGHTS
    from request.actions import ACTIONS

    run = subprocess.run([str(rank_binary), "--print-weights"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PHOENIX_TARGET": "127.0.0.1:1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    rust = json.loads(run.stdout)
    assert rust == DEFAULT_WEIGHTS
    assert sorted(rust) == sorted(ACTIONS)  # every action weighted, on both sides


@pytest.mark.rust
def test_rust_xai_actions_are_pythons(rank_binary):
    from server.contracts.xai import XAI_ACTION_OF

    run = subprocess.run([str(rank_binary), "--print-xai-actions"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PHOENIX_TARGET": "127.0.0.1:1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == XAI_ACTION_OF


def test_splitmix64_golden_values():
    # The same golden values as the Rust crate's splitmix64_matches_the_hashing_contract.
    rng = SplitMix64(42)
    assert rng.next_u64() == 13679457532755275413
    assert rng.next_u64() == 2949826092126892291


def test_layout_and_ranges():
    request = synthetic_request_dict(3, 50, 20, 5)
    assert set(request) == {"user_id", "request_id", "history", "candidates"}
    assert request["request_id"] == "synthetic-3"
    assert all(0 <= x["product_surface"] < 5 for x in request["history"] + request["candidates"])
    assert all(0 <= x["author_id"] < 5000 for x in request["history"] + request["candidates"])
    assert all(set(e) == {"post_id", "author_id", "actions", "product_surface"}
               for e in request["history"])  # fmt: skip
    assert all(set(c) == {"post_id", "author_id", "product_surface"} for c in request["candidates"])
    assert synthetic_request_dict(3, 50, 20, 5) == request
    with pytest.raises(ValueError):
        synthetic_request_dict(3, 1, 1, 0)


def test_the_module_stays_light():
    # Neither JAX, haiku nor gRPC: importing it (and request.actions) must not pull them in.
    code = (
        "import sys; import request.synthetic; "
        "heavy = [m for m in ('jax', 'haiku', 'grpc') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
