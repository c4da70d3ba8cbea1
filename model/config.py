"""Model configuration: frozen dataclasses that mirror the interop JSON field for field.

The JSON layout and field names are the reference implementation's (`TransformerConfig`,
`PhoenixModelConfig`, `HashConfig`) plus two of ours, `rope_positions` and `history_attention`
(see `docs/interop.md`). `PhoenixModelConfig.from_dict` accepts exactly
that JSON and rejects anything else with a `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from request.actions import NUM_ACTIONS
from request.hashing import TableRows

# RoPE position schemes.
#   "right_anchored": the later release. The newest history item sits at `history_end - 1`
#       (`history_end = 1 + history_seq_len`), every candidate at `history_end`, padding at 0.
#       A candidate's logits do not depend on its slot, so candidates can be scored in any
#       number of windows of any size (the server relies on this).
#   "plain": slot index, as in the first open-source release. A candidate's RoPE phase is its
#       slot, so its score depends on where it sits: isolation across slots and windows does NOT
#       hold, and the server refuses to serve such a model.
ROPE_POSITIONS = ("right_anchored", "plain")

# How user+history tokens attend among themselves. Candidates stay isolated either way: each
# candidate attends to every user+history token and to itself only.
#   "causal": each token sees itself and earlier tokens (the open-source seeds' mask).
#   "bidirectional": user+history tokens see each other freely (xAI's later production setting).
HISTORY_ATTENTION = ("causal", "bidirectional")


class ConfigError(ValueError):
    """A configuration that this code cannot build a model from; the message names the field."""


@dataclass(frozen=True)
class TransformerConfig:
    """The Grok-1-derived transformer stack."""

    emb_size: int  # D: model width.
    key_size: int  # K: width of one attention head (even: RoPE rotates feature pairs).
    num_q_heads: int  # Hq: query heads.
    num_kv_heads: int  # Hkv: key/value heads; Hq is a multiple of Hkv (grouped-query attention).
    num_layers: int  # Decoder layers.
    widening_factor: float = 4.0  # Feed-forward width is ffn_size(D, widening_factor).
    attn_output_multiplier: float = 1.0  # Scales attention logits (there is no 1/sqrt(K)).


@dataclass(frozen=True)
class HashConfig:
    """How many hash functions map each raw id to table rows."""

    num_user_hashes: int = 2  # U: hashes of the user id into `hash_embeddings/user`.
    num_item_hashes: int = 2  # I: hashes of a post id into `hash_embeddings/post`.
    num_author_hashes: int = 2  # Au: hashes of an author id into `hash_embeddings/author`.


@dataclass(frozen=True)
class PhoenixModelConfig:
    """The ranking model: sequence layout, vocabularies and the transformer."""

    model: TransformerConfig  # The transformer stack.
    emb_size: int  # D again, as in the reference config; must equal model.emb_size.
    num_actions: int = NUM_ACTIONS  # A: output logits per candidate (the 19 actions).
    history_seq_len: int = 128  # S: history slots; longer histories keep the newest S events.
    candidate_seq_len: int = 32  # C: candidate slots of one training/reference window.
    product_surface_vocab_size: int = 16  # V: product surfaces are ints in [0, V).
    hash_config: HashConfig = field(default_factory=HashConfig)
    rope_positions: str = "right_anchored"  # One of ROPE_POSITIONS (see there).
    history_attention: str = "causal"  # One of HISTORY_ATTENTION (see there).

    def __post_init__(self) -> None:
        validate(self)

    @property
    def candidates_isolated_across_windows(self) -> bool:
        """True when a candidate's logits do not depend on its slot or window."""
        return self.rope_positions == "right_anchored"

    @property
    def history_end(self) -> int:
        """Sequence index one past the last history slot: 1 (user token) + history_seq_len."""
        return 1 + self.history_seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhoenixModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        top = _fields_only(cls, data, "config")
        model = top["model"]
        if isinstance(model, dict) and isinstance(model.get("name"), str | None):
            # The reference's TransformerConfig has an optional haiku module `name`; it
            # names no parameter here (ours are always under `phoenix_model/`), so a config
            # dumped from the reference dataclass with it still imports.
            model = {k: v for k, v in model.items() if k != "name"}
        top["model"] = TransformerConfig(**_fields_only(TransformerConfig, model, "model"))
        if "hash_config" in top:
            hashes = _fields_only(HashConfig, top["hash_config"], "hash_config")
            top["hash_config"] = HashConfig(**hashes)
        return cls(**top)

    @classmethod
    def from_json(cls, text: str) -> PhoenixModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(data)


def _fields_only(cls: type, data: Any, where: str) -> dict[str, Any]:
    """`data` as kwargs for dataclass `cls`; ConfigError naming any unknown or missing field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {unknown}; known: {sorted(known)}")
    required = [
        name
        for name, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{where} is missing field(s) {missing}")
    return dict(data)


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def validate(config: PhoenixModelConfig) -> None:
    """Raise ConfigError naming the first field this code cannot build a model from."""
    m = config.model
    for name in ("emb_size", "key_size", "num_q_heads", "num_kv_heads", "num_layers"):
        _positive_int(getattr(m, name), f"model.{name}")
    if m.num_q_heads % m.num_kv_heads:
        raise ConfigError(
            f"model.num_q_heads ({m.num_q_heads}) must be a multiple of "
            f"model.num_kv_heads ({m.num_kv_heads})"
        )
    if m.key_size % 2:
        raise ConfigError(f"model.key_size must be even for RoPE, got {m.key_size}")
    for name in ("widening_factor", "attn_output_multiplier"):
        value = getattr(m, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"model.{name} must be a positive number, got {value!r}")
    _positive_int(config.emb_size, "emb_size")
    if config.emb_size != m.emb_size:
        raise ConfigError(f"emb_size ({config.emb_size}) must equal model.emb_size ({m.emb_size})")
    if config.num_actions != NUM_ACTIONS:
        raise ConfigError(
            f"num_actions is {config.num_actions}, but this code knows the {NUM_ACTIONS} "
            "actions of the open-sourced release"
        )
    for name in ("history_seq_len", "candidate_seq_len", "product_surface_vocab_size"):
        _positive_int(getattr(config, name), name)
    h = config.hash_config
    for name in ("num_user_hashes", "num_item_hashes", "num_author_hashes"):
        _positive_int(getattr(h, name), f"hash_config.{name}")
    if config.rope_positions not in ROPE_POSITIONS:
        raise ConfigError(
            f"rope_positions must be one of {ROPE_POSITIONS}, got {config.rope_positions!r}"
        )
    if config.history_attention not in HISTORY_ATTENTION:
        raise ConfigError(
            f"history_attention must be one of {HISTORY_ATTENTION}, "
            f"got {config.history_attention!r}"
        )


# xAI's "nano" shape (emb 512, 4 layers, history 1,022), the benchmarks' large model, with the
# table sizes `phoenix-ranker init --preset nano` writes unless told otherwise.
NANO = {
    "model": {"emb_size": 512, "key_size": 128, "num_q_heads": 4, "num_kv_heads": 2,
              "num_layers": 4, "widening_factor": 2.0, "attn_output_multiplier": 0.08838834764},
    "emb_size": 512, "num_actions": 19, "history_seq_len": 1022, "candidate_seq_len": 64,
    "product_surface_vocab_size": 16,
    "hash_config": {"num_user_hashes": 2, "num_item_hashes": 2, "num_author_hashes": 2},
    "rope_positions": "right_anchored", "history_attention": "causal",
}  # fmt: skip
NANO_TABLE_ROWS = TableRows(user=16411, post=65537, author=16411)
