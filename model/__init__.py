"""The Phoenix ranking model (JAX + haiku), parameter for parameter the reference's.

Public API: configuration, the pure mask/position/hash functions the contract depends on, the
haiku forward pass, request encoding, checkpoints and the exchange format.
"""

from model.actions import ACTIONS, NEGATIVE_ACTIONS, NUM_ACTIONS, action_index
from model.checkpoint import Checkpoint, CheckpointInfo, load_checkpoint, save_checkpoint
from model.config import (
    ConfigError,
    HashConfig,
    PhoenixModelConfig,
    TransformerConfig,
)
from model.embeddings import TableRows
from model.errors import (
    CheckpointError,
    ChecksumMismatchError,
    IncompatibleConfigError,
    MissingParameterError,
    NotACheckpointError,
    ParameterDtypeError,
    ParameterShapeError,
    TruncatedCheckpointError,
    UnexpectedParameterError,
)
from model.exchange import export_exchange, import_exchange, read_exchange
from model.features import EncodedRequest, Piece, RawRequest, RequestError, encode, pack_rows
from model.hashing import hash_ids, hash_rows, splitmix64_mix
from model.inference import Ranker
from model.mask import make_recsys_attn_mask
from model.params import TrainingState
from model.ranker import RankingBatch, default_compute_dtype, make_forward
from model.rope import right_anchored_rope_positions, sequence_positions
from model.transformer import ffn_size

__all__ = [
    "ACTIONS",
    "NEGATIVE_ACTIONS",
    "NUM_ACTIONS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInfo",
    "ChecksumMismatchError",
    "ConfigError",
    "EncodedRequest",
    "HashConfig",
    "IncompatibleConfigError",
    "MissingParameterError",
    "NotACheckpointError",
    "ParameterDtypeError",
    "ParameterShapeError",
    "PhoenixModelConfig",
    "Piece",
    "Ranker",
    "RankingBatch",
    "RawRequest",
    "RequestError",
    "TableRows",
    "TrainingState",
    "TransformerConfig",
    "TruncatedCheckpointError",
    "UnexpectedParameterError",
    "action_index",
    "default_compute_dtype",
    "encode",
    "export_exchange",
    "ffn_size",
    "hash_ids",
    "hash_rows",
    "import_exchange",
    "load_checkpoint",
    "make_forward",
    "make_recsys_attn_mask",
    "pack_rows",
    "read_exchange",
    "right_anchored_rope_positions",
    "save_checkpoint",
    "sequence_positions",
    "splitmix64_mix",
]
