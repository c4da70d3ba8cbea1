"""The reference-parity fixture, imported with the CLI and served end to end: in one process
and through frontend workers, with requests in the row and the columnar form."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from server.convert import (
    logits_from_pb,
    probabilities_from_pb,
    raw_request_to_columnar_pb,
    raw_request_to_pb,
    sigmoid,
)
from tests.conftest import PARITY_ATOL, PARITY_CASES, PARITY_DIR, PARITY_RTOL
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
