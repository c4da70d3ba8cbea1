"""The offline sub-commands, through the real console entry point."""

from __future__ import annotations

import json

import numpy as np

from phoenix_ranker.cli import main
from tests.conftest import PARITY_DIR


def test_import_then_export_is_bit_exact(tmp_path, capsys):
    checkpoint = tmp_path / "m.safetensors"
    assert main(["import", "--params", str(PARITY_DIR / "params.npz"), "--config",
                 str(PARITY_DIR / "config.json"), "--out", str(checkpoint)]) == 0  # fmt: skip
    assert "sha256=" in capsys.readouterr().out
    out_npz, out_json = tmp_path / "x.npz", tmp_path / "x.json"
    assert main(["export", "--checkpoint", str(checkpoint), "--params", str(out_npz),
                 "--config", str(out_json)]) == 0  # fmt: skip
    with np.load(PARITY_DIR / "params.npz") as a, np.load(out_npz) as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(a[k].tobytes() == b[k].tobytes() for k in a.files)
    assert json.loads(out_json.read_text()) == json.loads((PARITY_DIR / "config.json").read_text())


def test_a_bad_checkpoint_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert main(["export", "--checkpoint", str(junk), "--params", str(tmp_path / "o.npz"),
                 "--config", str(tmp_path / "o.json")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "NotACheckpointError" in err and "Traceback" not in err


def test_demo_ranks_a_synthetic_user(capsys):
    assert main(["demo", "--candidates", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "phoenix-default-v1" in lines[0]
    scores = [float(line.split()[3]) for line in lines[3:10]]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)
