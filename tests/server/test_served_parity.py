"""The reference-parity fixture, imported with the CLI and served end to end: in one process
and through frontend workers, with requests in the row and the columnar form."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time

import numpy as np
import pytest

from server.contracts.convert import (
    logits_from_pb,
    probabilities_from_pb,
    raw_request_to_columnar_pb,
    raw_request_to_pb,
)
from tests.conftest import PARITY_ATOL, PARITY_CASES, PARITY_DIR, PARITY_RTOL
from tests.helpers import random_request, sigmoid
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess, phoenix_ranker

pytestmark = pytest.mark.slow


MODES = {"one-process": (), "frontend-workers": ("--frontend-workers", "2")}


@pytest.fixture(scope="module", params=MODES)
def parity_server(request, tmp_path_factory, compilation_cache):
    checkpoint = tmp_path_factory.mktemp("served-parity") / "parity.safetensors"
    imported = subprocess.run(
        [*phoenix_ranker(), "import", "--params", str(PARITY_DIR / "params.npz"),
         "--config", str(PARITY_DIR / "config.json"), "--out", str(checkpoint)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    # Windows of 5 and 12 candidates, not the reference's 8, and history buckets 4 and 16.
    with ServerProcess("--checkpoint", str(checkpoint), "--max-batch-size", "4",
                       "--candidate-buckets", "5,12", "--history-buckets", "4,16",
                       *MODES[request.param], env=compilation_cache) as server:  # fmt: skip
        yield server


FORMS = {"rows": raw_request_to_pb, "columns": raw_request_to_columnar_pb}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: c.id)
def test_served_logits_reproduce_the_reference(parity_server, case, form):
    response = parity_server.client.rank(FORMS[form](case.request))
    got = logits_from_pb(response)
    assert got.shape == case.expected.shape
    np.testing.assert_allclose(got, case.expected, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    # Probabilities are the device's sigmoid of those logits.
    np.testing.assert_allclose(probabilities_from_pb(response), sigmoid(got), rtol=1e-6, atol=1e-7)
    assert response.model_version == "imported:params"


def test_every_call_is_counted_once(parity_server):
    """In either mode /metrics (the device process) counts each call exactly once."""
    before = parity_server.metrics()
    key = "phoenix_requests_total{code=OK,method=Rank}"
    for case in PARITY_CASES[:3]:
        parity_server.client.rank(raw_request_to_columnar_pb(case.request))
    deadline = time.monotonic() + 10
    while (m := parity_server.metrics())[key] < before[key] + 3:
        assert time.monotonic() < deadline
    assert m[key] == before[key] + 3
    assert m["phoenix_requests_in_flight"] == 0


def test_serving_begins_before_every_shape_is_compiled_and_stays_exact(tmp_path, default_ranker):
    # A cold cache: compiling the rest takes seconds, so requests meet a partly ready plan.
    env = {"PHOENIX_COMPILATION_CACHE": str(tmp_path / "cold-cache")}
    with ServerProcess(*SMALL_PLAN, env=env, all_shapes=False) as server:
        serving = server.serving_event
        assert serving["shapes_ready"] < serving["shapes"]
        rng = np.random.default_rng(21)
        raws = [random_request(rng, int(rng.integers(0, 64)), m) for m in (1, 9, 33, 70, 5, 40)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda r: server.client.rank(raw_request_to_pb(r)), raws))
        for raw, response in zip(raws, responses, strict=True):
            np.testing.assert_allclose(
                logits_from_pb(response), default_ranker.logits(raw), rtol=1e-5, atol=1e-5
            )
        deadline = time.monotonic() + 300
        while not any(e.get("event") == "compiled_all" for e in server.events()):
            assert time.monotonic() < deadline, "the remaining shapes never finished compiling"
            time.sleep(0.1)
        m = server.metrics()
        assert m["phoenix_batch_shapes_ready"] == m["phoenix_compilations_total"]
        assert m["phoenix_compilations_total"] == serving["shapes"]  # each planned shape once
        assert "unplanned" not in server.log()
