"""The Phoenix ranking model (JAX + haiku), parameter for parameter the reference's.

Public API: configuration, the pure mask and position functions, the haiku forward pass,
checkpoints and the exchange format. The model reads the request's arrays (`request/`); the
request package imports nothing of the model (the action names and the id hashing are its:
`request.actions`, `request.hashing`). `_EXPORTS` is the one list of public names; they
resolve lazily (PEP 562), so `import model` alone does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "model.checkpoint": ["Checkpoint", "CheckpointInfo", "load_checkpoint", "save_checkpoint"],
    "model.config": [
        "ConfigError",
        "HashConfig",
        "PhoenixModelConfig",
        "TransformerConfig",
    ],
    "model.errors": [
        "CheckpointError",
        "ChecksumMismatchError",
        "IncompatibleConfigError",
        "MissingParameterError",
        "NotACheckpointError",
        "ParameterDtypeError",
        "ParameterShapeError",
        "TruncatedCheckpointError",
        "UnexpectedParameterError",
    ],
    "model.exchange": ["export_exchange", "import_exchange", "read_exchange"],
    "model.mask": ["make_recsys_attn_mask"],
    "model.params": ["TrainingState"],
    "model.network": ["default_compute_dtype", "make_forward"],
    "model.ranker": ["Ranker"],
    "model.rope": ["right_anchored_rope_positions", "sequence_positions"],
    "model.transformer": ["ffn_size"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
