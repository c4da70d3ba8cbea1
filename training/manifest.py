"""The training manifest: the record written beside a trained checkpoint.

`X.safetensors` has `X.manifest.json` beside it: the command that made it, the synthetic world
and training settings (enough to rebuild its data exactly), the environment and the held-out
AUCs. `phoenix-ranker eval` and `demo` read the world back from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.errors import CheckpointError


def manifest_path(checkpoint: Path) -> Path:
    """Where the training record of a checkpoint lives: X.safetensors -> X.manifest.json."""
    return Path(checkpoint).with_suffix(".manifest.json")


def write_manifest(checkpoint: Path, manifest: dict[str, Any]) -> Path:
    path = manifest_path(checkpoint)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_manifest(checkpoint: Path, path: Path | None = None) -> dict[str, Any]:
    """The manifest of `checkpoint` (or the one at `path`); CheckpointError if there is none."""
    path = path or manifest_path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: no training manifest (the world to evaluate on)")
    return json.loads(path.read_text())


def world_sample(checkpoint: Path, history_seq_len: int, candidates: int, seed: int):
    """One request (a `Dataset` of 1) from the world the checkpoint was trained on, or the
    default world when it has no manifest; the dataset also holds the true probabilities."""
    from training.world import World, WorldConfig

    path = manifest_path(checkpoint)
    config = WorldConfig(**load_manifest(checkpoint)["world"]) if path.exists() else WorldConfig()
    return World(config).sample(1, history_seq_len, candidates, seed=1000 + seed)
