"""The Phoenix ranking model (JAX + haiku), parameter for parameter the reference's.

Public API: configuration, the pure mask/position/hash functions the contract depends on, the
haiku forward pass, request encoding, checkpoints and the exchange format. Names resolve lazily
(PEP 562), so `import model` alone does not import JAX: light commands such as
`phoenix-ranker health` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "model.actions": ["ACTIONS", "NEGATIVE_ACTIONS", "NUM_ACTIONS", "action_index"],
    "model.checkpoint": ["Checkpoint", "CheckpointInfo", "load_checkpoint", "save_checkpoint"],
    "model.config": ["ConfigError", "HashConfig", "PhoenixModelConfig", "TransformerConfig"],
    "model.embeddings": ["TableRows"],
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
    "model.features": [
        "EncodedRequest",
        "Piece",
        "RawRequest",
        "RequestError",
        "encode",
        "pack_rows",
    ],
    "model.hashing": ["hash_ids", "hash_rows", "splitmix64_mix"],
    "model.inference": ["Ranker"],
    "model.mask": ["make_recsys_attn_mask"],
    "model.params": ["TrainingState"],
    "model.ranker": ["RankingBatch", "default_compute_dtype", "make_forward"],
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


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from model.actions import ACTIONS, NEGATIVE_ACTIONS, NUM_ACTIONS, action_index  # noqa: F401
    from model.checkpoint import Checkpoint, CheckpointInfo, load_checkpoint, save_checkpoint  # noqa: F401
    from model.config import ConfigError, HashConfig, PhoenixModelConfig, TransformerConfig  # noqa: F401
    from model.features import RawRequest  # noqa: F401
    from model.inference import Ranker  # noqa: F401
    from model.mask import make_recsys_attn_mask  # noqa: F401
    from model.rope import right_anchored_rope_positions  # noqa: F401
    from model.transformer import ffn_size  # noqa: F401
