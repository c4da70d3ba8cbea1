from __future__ import annotations

import pytest

from model import Ranker
from model.checkpoint import default_checkpoint_path
from tests.server.harness import ServerProcess

# A small batch-shape plan keeps each server's warm-up to seconds; a second window size
# (8 and 32 candidates) still exercises splitting requests across windows and rows.
SMALL_PLAN = ("--max-batch-size", "8", "--candidate-buckets", "8,32", "--max-batch-wait-ms", "5")


@pytest.fixture(scope="session")
def default_server(compilation_cache):
    """One default-model server for every test module that only needs a running server."""
    with ServerProcess(*SMALL_PLAN, env=compilation_cache) as server:
        yield server


@pytest.fixture(scope="session")
def default_ranker() -> Ranker:
    return Ranker.from_checkpoint(default_checkpoint_path())
