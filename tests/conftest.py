"""Shared fixtures: the reference-parity fixture and a checkpoint imported from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import PhoenixModelConfig, import_exchange
from request.raw import RawRequest

ROOT = Path(__file__).resolve().parents[1]
# A byte-identical copy of shared/fixtures/reference-parity (tests/model/test_parity.py checks
# it against the shared original whenever that is present), so CI needs nothing outside the repo.
PARITY_DIR = ROOT / "tests" / "fixtures" / "reference-parity"


class ParityCase:
    def __init__(self, case: dict):
        self.request_json = case["request"]
        self.request = RawRequest.from_dict(case["request"])
        self.expected = np.array(case["expected_logits"], dtype=np.float32)

    @property
    def id(self) -> str:
        return self.request.request_id


def _load_cases() -> tuple[list[ParityCase], float, float]:
    data = json.loads((PARITY_DIR / "cases.json").read_text())
    return [ParityCase(c) for c in data["cases"]], data["atol"], data["rtol"]


PARITY_CASES, PARITY_ATOL, PARITY_RTOL = _load_cases()


@pytest.fixture(scope="session")
def parity_config() -> PhoenixModelConfig:
    return PhoenixModelConfig.from_json((PARITY_DIR / "config.json").read_text())


@pytest.fixture(scope="session")
def parity_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parity") / "parity.safetensors"
    import_exchange(PARITY_DIR / "params.npz", PARITY_DIR / "config.json", out, "reference-parity")
    return out


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> dict[str, str]:
    """Servers started by one test session share JAX's persistent compilation cache."""
    return {"PHOENIX_COMPILATION_CACHE": str(tmp_path_factory.mktemp("jax-cache"))}
