"""The one declared schema of a request's input arrays, and everything derived from it.

Glossary: n history events of one request, m its candidates, B batch rows, S history slots,
C candidate slots, U / I / Au hashes per user / post / author id, A actions.

Every array the model reads about a request is one `Column` of `COLUMNS`, derived from one
`request.features.Feature`: its name, dtype, per-row width, which part of the request it
describes (the user, one history event, or one candidate) and, for hashed ids, the table whose
rows it holds and the raw feature it is hashed from. The rest of the request path is derived
from this list, never restated:

    EncodedRequest                  one request's arrays: user [U], history [n, ...], candidates [m, ...]
    RankingBatch                    padded batch rows: user [B, U], history [B, S, ...], candidates [B, C, ...]
    PrefixInputs / CandidateInputs  the user+history columns and the candidate columns of a batch
    empty / fill / split            padding, filling a row, splitting a batch into its two halves
    Layout                          the columns resolved for one model config (dtypes and shapes:
                                    what the frontend-worker frame carries, `server.door.ipc`)
    prefix_digest                   what identifies an encoded prefix (the prefix cache's key)
    filled                          a synthetic request of any size (the device-rate measurement)

`request.encoding.encode` hashes a `RawRequest` into an EncodedRequest column by column from
the same list. Adding an input array is therefore one feature (`request.features`) and the
model that reads it.

numpy only, and nothing of this project below it but the request's own declarations: model
code and the request path both import it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from request.features import FEATURES, Part


class ModelShape(Protocol):
    """What the request side reads of a model's config (`model.config.PhoenixModelConfig` is
    one): the request package depends on no model code, the model on the request's arrays."""

    history_seq_len: int  # S: history events kept, the newest
    num_actions: int  # A
    product_surface_vocab_size: int  # surfaces are 0 .. this - 1
    hash_config: Any  # num_user_hashes, num_item_hashes, num_author_hashes


@dataclass(frozen=True)
class Column:
    """One input array of a request."""

    name: str  # attribute of EncodedRequest, RankingBatch and the split inputs
    dtype: str  # numpy dtype of the encoded array
    part: Part
    width: str | None = None  # config attribute giving the trailing width; None: one value a row
    table: str | None = None  # hash table ("user", "post", "author") whose row numbers it holds
    source: str = ""  # RawRequest attribute it is encoded from (hashed when `table` is set)
    doc: str = ""

    def row_shape(self, config: ModelShape) -> tuple[int, ...]:
        """The shape of one row for a model config."""
        return () if self.width is None else (int(operator.attrgetter(self.width)(config)),)


COLUMNS: tuple[Column, ...] = tuple(
    Column(f.input_name, f.input_dtype, f.part, f.width, f.table, f.name, f.doc) for f in FEATURES
)


@dataclass(frozen=True)
class ArraySpec:
    """A column resolved for one model: its numpy dtype and the shape of one row."""

    name: str
    dtype: np.dtype
    part: Part
    row_shape: tuple[int, ...]

    def shape(self, n: int, m: int) -> tuple[int, ...]:
        """One request's array: [*row] for the user, [n, *row] history, [m, *row] candidates."""
        lead = {Part.USER: (), Part.HISTORY: (n,), Part.CANDIDATE: (m,)}[self.part]
        return (*lead, *self.row_shape)

    def padded_shape(self, rows: int, history_slots: int, candidate_slots: int) -> tuple[int, ...]:
        """A batch's array: [B, *row], [B, S, *row] or [B, C, *row]."""
        slots = {Part.USER: (), Part.HISTORY: (history_slots,), Part.CANDIDATE: (candidate_slots,)}
        return (rows, *slots[self.part], *self.row_shape)


@dataclass(frozen=True, eq=False)
class Layout:
    """A schema's columns resolved for one model config (iterates over its `ArraySpec`s)."""

    schema: Schema
    arrays: tuple[ArraySpec, ...]

    def __iter__(self):
        return iter(self.arrays)

    def shapes(self, n: int, m: int) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        """(name, dtype, shape) of each array of a request with n events and m candidates."""
        return [(a.name, a.dtype, a.shape(n, m)) for a in self.arrays]

    def request(self, arrays: Mapping[str, np.ndarray]):
        """An EncodedRequest of the schema from its arrays by name."""
        return self.schema.request(arrays)


class Schema:
    """A list of columns and the types and functions derived from it (see the module)."""

    def __init__(self, columns: Iterable[Column]):
        self.columns = tuple(columns)
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"column names repeat: {names}")
        for part in Part:
            if not any(c.part is part for c in self.columns):
                raise ValueError(f"no column describes the {part.value}")
        self.prefix = tuple(c for c in self.columns if c.part.prefix)
        self.candidates = tuple(c for c in self.columns if not c.part.prefix)
        history = next(c.name for c in self.columns if c.part is Part.HISTORY)
        candidate = self.candidates[0].name
        self.encoded_type = dataclasses.make_dataclass(
            "EncodedRequest", [(c.name, np.ndarray) for c in self.columns],
            frozen=True, eq=False,  # identity: a request object is a cache key when reuse is off
            namespace={
                "__doc__": "One request hashed into table rows; history holds the newest S "
                "events, oldest first. Fields: request.columns.COLUMNS.",
                "num_history": property(lambda r: getattr(r, history).shape[0]),
                "num_candidates": property(lambda r: getattr(r, candidate).shape[0]),
            },
        )  # fmt: skip
        self.encoded_type.__module__ = __name__
        self.batch_type = _record("RankingBatch", self.columns)
        self.prefix_type = _record("PrefixInputs", self.prefix)
        self.candidate_type = _record("CandidateInputs", self.candidates)
        self._layouts: dict[Any, Layout] = {}

    def layout(self, config: ModelShape) -> Layout:
        """The columns' dtypes and row shapes for a model config (computed once per config)."""
        layout = self._layouts.get(config)
        if layout is None:
            layout = self._layouts[config] = Layout(self, tuple(
                ArraySpec(c.name, np.dtype(c.dtype), c.part, c.row_shape(config))
                for c in self.columns
            ))  # fmt: skip
        return layout

    # -- padded batches ----------------------------------------------------------------------

    def empty_batch(self, layout: Layout, rows: int, history_slots: int, candidate_slots: int):
        """An all-padding RankingBatch [B, S, C]: table row 0, surface 0, no actions."""
        return self.batch_type(*(np.zeros(a.padded_shape(rows, history_slots, candidate_slots),
                                          a.dtype) for a in layout))  # fmt: skip

    def empty_prefix(self, layout: Layout, rows: int, history_slots: int):
        """All-padding PrefixInputs [R, S]."""
        return self.prefix_type(*(np.zeros(a.padded_shape(rows, history_slots, 0), a.dtype)
                                  for a in layout if a.part.prefix))  # fmt: skip

    def empty_candidates(self, layout: Layout, rows: int, candidate_slots: int):
        """All-padding CandidateInputs [Kc, C]."""
        return self.candidate_type(*(np.zeros(a.padded_shape(rows, 0, candidate_slots), a.dtype)
                                     for a in layout if not a.part.prefix))  # fmt: skip

    def fill_prefix(self, inputs, row: int, request) -> None:
        """Write a request's user and history into row `row` of a batch or PrefixInputs (its
        n history slots first)."""
        n = request.num_history
        for c in self.prefix:
            target = getattr(inputs, c.name)
            if c.part is Part.USER:
                target[row] = getattr(request, c.name)
            else:
                target[row, :n] = getattr(request, c.name)

    def fill_candidates(self, inputs, row: int, request, start: int, stop: int) -> None:
        """Write candidates [start, stop) of a request into the first slots of row `row` of a
        batch or CandidateInputs."""
        for c in self.candidates:
            getattr(inputs, c.name)[row, : stop - start] = getattr(request, c.name)[start:stop]

    def split(self, batch) -> tuple[Any, Any]:
        """A RankingBatch as (PrefixInputs, CandidateInputs)."""
        return (self.prefix_type(*(getattr(batch, c.name) for c in self.prefix)),
                self.candidate_type(*(getattr(batch, c.name) for c in self.candidates)))  # fmt: skip

    # -- one request ---------------------------------------------------------------------

    def request(self, arrays: Mapping[str, np.ndarray]):
        """An EncodedRequest from its arrays by name (every column, nothing else)."""
        return self.encoded_type(**arrays)

    def prefix_digest(self, request) -> bytes:
        """A 128-bit digest of a request's prefix: every user and history array (shape,
        then bytes, in schema order). Two prefixes that differ in any value differ here."""
        h = hashlib.blake2b(digest_size=16)
        for c in self.prefix:
            value = np.ascontiguousarray(getattr(request, c.name), c.dtype)
            h.update(repr(value.shape).encode())
            h.update(value.tobytes())
        return h.digest()

    def filled(self, layout: Layout, n: int, m: int, row: int):
        """A request of n events and m candidates whose table columns all hold row `row` and
        whose other columns are 0 (no actions, surface 0): timing runs, warm-up."""
        return self.encoded_type(**{
            a.name: np.full(a.shape(n, m), row if _is_table(self, a.name) else 0, a.dtype)
            for a in layout
        })  # fmt: skip


def _is_table(schema: Schema, name: str) -> bool:
    return next(c for c in schema.columns if c.name == name).table is not None


def _record(name: str, columns: tuple[Column, ...]) -> type:
    """A NamedTuple (a JAX pytree) with one field per column, documented from the columns."""
    record = collections.namedtuple(name, [c.name for c in columns])
    record.__module__ = __name__
    record.__doc__ = f"{name}: " + "; ".join(f"{c.name} {c.dtype}" for c in columns)
    return record


SCHEMA = Schema(COLUMNS)
EncodedRequest = SCHEMA.encoded_type
RankingBatch = SCHEMA.batch_type
PrefixInputs = SCHEMA.prefix_type
CandidateInputs = SCHEMA.candidate_type
