from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_FAVORITE: _ClassVar[Action]
    ACTION_REPLY: _ClassVar[Action]
    ACTION_REPOST: _ClassVar[Action]
    ACTION_PHOTO_EXPAND: _ClassVar[Action]
    ACTION_CLICK: _ClassVar[Action]
    ACTION_PROFILE_CLICK: _ClassVar[Action]
    ACTION_VIDEO_QUALITY_VIEW: _ClassVar[Action]
    ACTION_SHARE: _ClassVar[Action]
    ACTION_SHARE_VIA_DM: _ClassVar[Action]
    ACTION_SHARE_VIA_COPY_LINK: _ClassVar[Action]
    ACTION_DWELL: _ClassVar[Action]
    ACTION_QUOTE: _ClassVar[Action]
    ACTION_QUOTED_CLICK: _ClassVar[Action]
    ACTION_FOLLOW_AUTHOR: _ClassVar[Action]
    ACTION_NOT_INTERESTED: _ClassVar[Action]
    ACTION_BLOCK_AUTHOR: _ClassVar[Action]
    ACTION_MUTE_AUTHOR: _ClassVar[Action]
    ACTION_REPORT: _ClassVar[Action]
    ACTION_DWELL_TIME: _ClassVar[Action]
ACTION_UNSPECIFIED: Action
ACTION_FAVORITE: Action
ACTION_REPLY: Action
ACTION_REPOST: Action
ACTION_PHOTO_EXPAND: Action
ACTION_CLICK: Action
ACTION_PROFILE_CLICK: Action
ACTION_VIDEO_QUALITY_VIEW: Action
ACTION_SHARE: Action
ACTION_SHARE_VIA_DM: Action
ACTION_SHARE_VIA_COPY_LINK: Action
ACTION_DWELL: Action
ACTION_QUOTE: Action
ACTION_QUOTED_CLICK: Action
ACTION_FOLLOW_AUTHOR: Action
ACTION_NOT_INTERESTED: Action
ACTION_BLOCK_AUTHOR: Action
ACTION_MUTE_AUTHOR: Action
ACTION_REPORT: Action
ACTION_DWELL_TIME: Action

class HistoryEvent(_message.Message):
    __slots__ = ("post_id", "author_id", "actions", "product_surface")
    POST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_SURFACE_FIELD_NUMBER: _ClassVar[int]
    post_id: int
    author_id: int
    actions: _containers.RepeatedScalarFieldContainer[Action]
    product_surface: int
    def __init__(self, post_id: _Optional[int] = ..., author_id: _Optional[int] = ..., actions: _Optional[_Iterable[_Union[Action, str]]] = ..., product_surface: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("post_id", "author_id", "product_surface")
    POST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_SURFACE_FIELD_NUMBER: _ClassVar[int]
    post_id: int
    author_id: int
    product_surface: int
    def __init__(self, post_id: _Optional[int] = ..., author_id: _Optional[int] = ..., product_surface: _Optional[int] = ...) -> None: ...

class HistoryColumns(_message.Message):
    __slots__ = ("post_ids", "author_ids", "action_masks", "product_surfaces")
    POST_IDS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_MASKS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_SURFACES_FIELD_NUMBER: _ClassVar[int]
    post_ids: _containers.RepeatedScalarFieldContainer[int]
    author_ids: _containers.RepeatedScalarFieldContainer[int]
    action_masks: _containers.RepeatedScalarFieldContainer[int]
    product_surfaces: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, post_ids: _Optional[_Iterable[int]] = ..., author_ids: _Optional[_Iterable[int]] = ..., action_masks: _Optional[_Iterable[int]] = ..., product_surfaces: _Optional[_Iterable[int]] = ...) -> None: ...

class CandidateColumns(_message.Message):
    __slots__ = ("post_ids", "author_ids", "product_surfaces")
    POST_IDS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_IDS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_SURFACES_FIELD_NUMBER: _ClassVar[int]
    post_ids: _containers.RepeatedScalarFieldContainer[int]
    author_ids: _containers.RepeatedScalarFieldContainer[int]
    product_surfaces: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, post_ids: _Optional[_Iterable[int]] = ..., author_ids: _Optional[_Iterable[int]] = ..., product_surfaces: _Optional[_Iterable[int]] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user_id", "history", "candidates", "request_id", "history_columns", "candidate_columns")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    history: _containers.RepeatedCompositeFieldContainer[HistoryEvent]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    request_id: str
    history_columns: HistoryColumns
    candidate_columns: CandidateColumns
    def __init__(self, user_id: _Optional[int] = ..., history: _Optional[_Iterable[_Union[HistoryEvent, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., request_id: _Optional[str] = ..., history_columns: _Optional[_Union[HistoryColumns, _Mapping]] = ..., candidate_columns: _Optional[_Union[CandidateColumns, _Mapping]] = ...) -> None: ...

class CandidateScores(_message.Message):
    __slots__ = ("post_id", "logits", "probabilities")
    POST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    post_id: int
    logits: _containers.RepeatedScalarFieldContainer[float]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, post_id: _Optional[int] = ..., logits: _Optional[_Iterable[float]] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("scores", "model_version", "request_id")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[CandidateScores]
    model_version: str
    request_id: str
    def __init__(self, scores: _Optional[_Iterable[_Union[CandidateScores, _Mapping]]] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "actions", "history_seq_len", "candidate_seq_len", "max_candidates_per_request", "checkpoint_sha256", "emb_size", "num_layers", "num_q_heads", "num_kv_heads", "key_size", "widening_factor", "attn_output_multiplier", "product_surface_vocab_size", "num_user_hashes", "num_item_hashes", "num_author_hashes", "rope_positions", "history_attention", "user_table_rows", "post_table_rows", "author_table_rows", "num_parameters", "compute_dtype", "backend", "checkpoint_created_at", "max_history_events", "table_dtype", "table_placement", "table_bytes", "table_sharding")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    EMB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_Q_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDENING_FACTOR_FIELD_NUMBER: _ClassVar[int]
    ATTN_OUTPUT_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_SURFACE_VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_USER_HASHES_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEM_HASHES_FIELD_NUMBER: _ClassVar[int]
    NUM_AUTHOR_HASHES_FIELD_NUMBER: _ClassVar[int]
    ROPE_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    USER_TABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    POST_TABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_TABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_EVENTS_FIELD_NUMBER: _ClassVar[int]
    TABLE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TABLE_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    TABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TABLE_SHARDING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    history_seq_len: int
    candidate_seq_len: int
    max_candidates_per_request: int
    checkpoint_sha256: str
    emb_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    key_size: int
    widening_factor: float
    attn_output_multiplier: float
    product_surface_vocab_size: int
    num_user_hashes: int
    num_item_hashes: int
    num_author_hashes: int
    rope_positions: str
    history_attention: str
    user_table_rows: int
    post_table_rows: int
    author_table_rows: int
    num_parameters: int
    compute_dtype: str
    backend: str
    checkpoint_created_at: str
    max_history_events: int
    table_dtype: str
    table_placement: str
    table_bytes: int
    table_sharding: str
    def __init__(self, model_version: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., history_seq_len: _Optional[int] = ..., candidate_seq_len: _Optional[int] = ..., max_candidates_per_request: _Optional[int] = ..., checkpoint_sha256: _Optional[str] = ..., emb_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., num_q_heads: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., key_size: _Optional[int] = ..., widening_factor: _Optional[float] = ..., attn_output_multiplier: _Optional[float] = ..., product_surface_vocab_size: _Optional[int] = ..., num_user_hashes: _Optional[int] = ..., num_item_hashes: _Optional[int] = ..., num_author_hashes: _Optional[int] = ..., rope_positions: _Optional[str] = ..., history_attention: _Optional[str] = ..., user_table_rows: _Optional[int] = ..., post_table_rows: _Optional[int] = ..., author_table_rows: _Optional[int] = ..., num_parameters: _Optional[int] = ..., compute_dtype: _Optional[str] = ..., backend: _Optional[str] = ..., checkpoint_created_at: _Optional[str] = ..., max_history_events: _Optional[int] = ..., table_dtype: _Optional[str] = ..., table_placement: _Optional[str] = ..., table_bytes: _Optional[int] = ..., table_sharding: _Optional[str] = ...) -> None: ...
