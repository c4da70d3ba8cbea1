"""Every feature of a request, declared once: what it is raw, where each wire form carries it,
and the model input it becomes.

Glossary: n history events, m candidates, A actions (19), U / I / Au hashes per user / post /
author id.

A `Feature` is one raw column of a request: the user's id, or one value (or multi-hot row)
per history event or per candidate. Its kind fixes its raw dtype, its default and its domain;
its key names it in one event or candidate (the JSON request's key and the proto's row field),
`columns_field` in the columnar proto form; an id names the hash table it is looked up in, an
index the model config's vocabulary that bounds it. Derived from `FEATURES`, never restated:

    request.raw.RawRequest        its fields, the JSON form both ways, validation
    request.schema                the JSON Schema of a request file
    request.columns.COLUMNS       the model inputs (`input_name`) and all that follows them
    server.contracts.convert      both RankRequest forms, both ways
    server.contracts.xai          xAI's forms: the features xAI's contract carries are read,
                                  the others take their default
    server.publication.describe   ModelInfo's vocabularies
    training.world                the synthetic world's requests and batches

Adding a feature is therefore one entry here, its fields in the proto, and the model that
reads it (its embedding and, for an index, the vocabulary in the model config).

numpy only, and nothing of this project below it.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np

from request.actions import NUM_ACTIONS
from request.hashing import HASHES


class Part(enum.Enum):
    """What one row of a feature (or of a model input) describes."""

    USER = "user"  # the request's user: one row per request, [*width]
    HISTORY = "history"  # one history event: [n, *width] per request, [B, S, *width] batched
    CANDIDATE = "candidate"  # one candidate: [m, *width] per request, [B, C, *width] batched

    @property
    def prefix(self) -> bool:
        """Encoded once per request and shared by all its candidate chunks."""
        return self is not Part.CANDIDATE

    @property
    def items(self) -> str:
        """The JSON request's (and RankRequest's row form's) list of this part's items."""
        return _ITEMS[self]


_ITEMS = {Part.USER: "", Part.HISTORY: "history", Part.CANDIDATE: "candidates"}


class Kind(enum.Enum):
    """A feature's raw dtype, default and domain."""

    ID = "id"  # an unsigned 64-bit id, hashed into a table: uint64, required
    INDEX = "index"  # an index into one of the model's vocabularies: int64 in [0, V), default 0
    ACTIONS = "actions"  # the actions taken, multi-hot over `request.actions.ACTIONS`: uint8 [A]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({Kind.ID: np.uint64, Kind.INDEX: np.int64, Kind.ACTIONS: np.uint8}[self])


@dataclass(frozen=True)
class Feature:
    """One raw column of a request: [] for the user's, [n, *row] for history, [m, *row] for
    candidates (row: [A] for actions, else one value)."""

    name: str  # the RawRequest field
    part: Part
    kind: Kind
    key: str  # in one item: the JSON key, the proto row message's field
    columns_field: str = ""  # the proto's columnar field (HistoryColumns, CandidateColumns)
    table: str | None = None  # ID: the hash table (`request.hashing.TableRows`) it is looked up in
    vocab: str | None = None  # INDEX: the model config attribute (and ModelInfo field) bounding it
    input: str = ""  # the model input it becomes (`request.columns`); default: its own name
    doc: str = ""

    # Read per request on the hot path: computed once per feature.
    @functools.cached_property
    def dtype(self) -> np.dtype:
        return self.kind.dtype

    @functools.cached_property
    def row_shape(self) -> tuple[int, ...]:
        return (NUM_ACTIONS,) if self.kind is Kind.ACTIONS else ()

    @property
    def input_name(self) -> str:
        return self.input or self.name

    @property
    def input_dtype(self) -> str:
        """The model input's dtype: an id's table rows and an index are int32."""
        return "uint8" if self.kind is Kind.ACTIONS else "int32"

    def empty(self, count: int) -> np.ndarray:
        """`count` items of its default: [count, *row] zeros (no id, no action, index 0)."""
        return np.zeros((count, *self.row_shape), self.dtype)

    @property
    def width(self) -> str | None:
        """The model config attribute giving the model input's trailing width."""
        if self.kind is Kind.ID:
            return HASHES[self.table]
        return "num_actions" if self.kind is Kind.ACTIONS else None


FEATURES: tuple[Feature, ...] = (
    Feature("user_id", Part.USER, Kind.ID, "user_id", table="user", input="user_rows",
            doc="the user being ranked for"),
    Feature("history_post_ids", Part.HISTORY, Kind.ID, "post_id", "post_ids", table="post",
            input="history_post_rows", doc="the post engaged with"),
    Feature("history_author_ids", Part.HISTORY, Kind.ID, "author_id", "author_ids",
            table="author", input="history_author_rows", doc="its author"),
    Feature("history_actions", Part.HISTORY, Kind.ACTIONS, "actions", "action_masks",
            doc="the actions the user took on the post"),
    Feature("history_surface", Part.HISTORY, Kind.INDEX, "product_surface", "product_surfaces",
            vocab="product_surface_vocab_size", doc="the product surface it was seen on"),
    Feature("candidate_post_ids", Part.CANDIDATE, Kind.ID, "post_id", "post_ids", table="post",
            input="candidate_post_rows", doc="the candidate post"),
    Feature("candidate_author_ids", Part.CANDIDATE, Kind.ID, "author_id", "author_ids",
            table="author", input="candidate_author_rows", doc="its author"),
    Feature("candidate_surface", Part.CANDIDATE, Kind.INDEX, "product_surface",
            "product_surfaces", vocab="product_surface_vocab_size",
            doc="where it would be shown"),
)  # fmt: skip


@functools.cache
def of_part(part: Part) -> tuple[Feature, ...]:
    """The features of the user, of each history event, or of each candidate, in order."""
    return tuple(f for f in FEATURES if f.part is part)


def defaults(part: Part, count: int, given: dict[str, np.ndarray] | None = None
             ) -> dict[str, np.ndarray]:  # fmt: skip
    """`count` history events or candidates by field: the `given` features, every other at
    its default (what a wire form that does not carry a feature decodes to)."""
    given = given or {}
    return {f.name: given[f.name] if f.name in given else f.empty(count) for f in of_part(part)}


VOCABULARIES: tuple[str, ...] = tuple(dict.fromkeys(f.vocab for f in FEATURES if f.vocab))
