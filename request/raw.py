"""A ranking request in raw ids: its columns, its JSON form and its validation.

Glossary: n history events, m candidates, A actions (19).

`RawRequest` is what a client sends, as numpy columns: one field per feature of
`request.features`, from which its JSON form and its validation are derived too. Its JSON form (what
`phoenix-ranker rank --request FILE` reads; `examples/request.json` is one) is defined by the
JSON Schema in `request.schema`, which `from_dict` validates against before anything else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from request.actions import ACTIONS, NUM_ACTIONS, action_index
from request.columns import ModelShape
from request.features import FEATURES, Feature, Kind, Part, of_part
from request.schema import UINT64_MAX, request_schema


class RequestError(ValueError):
    """A request the model cannot score; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def read_json_file(path: str | os.PathLike) -> Any:
    """A JSON file's value; RequestError (one line) if it is missing or not JSON."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RequestError("request", f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError("request", f"{path} is not JSON: {e}") from None


class _RawRequest:
    """One ranking request in raw ids: one field per feature (`request.features.FEATURES`;
    ids uint64, indices int64, actions uint8 [A] multi-hot over ACTIONS; history [n, ...]
    oldest first, candidates [m, ...] in request order), then `request_id`."""

    @property
    def num_candidates(self) -> int:
        return len(getattr(self, of_part(Part.CANDIDATE)[0].name))

    @property
    def num_history(self) -> int:
        return len(getattr(self, of_part(Part.HISTORY)[0].name))

    @classmethod
    def from_dict(cls, data: Any) -> RawRequest:
        """From the JSON form (`request.schema`): actions by name, ids as integers.

        RequestError names the first field that breaks the schema.
        """
        check_schema(data)
        fields = {}
        for f in FEATURES:
            if f.part is Part.USER:
                fields[f.name] = _uint64(data.get(f.key), f.key)
                continue
            items = data.get(f.part.items, [])
            fields[f.name] = _from_items(f, items)
        return cls(**fields, request_id=str(data.get("request_id", "")))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RawRequest:
        """Read a request file; RequestError (one line) if it is missing or malformed."""
        return cls.from_dict(read_json_file(path))

    def items(self, part: Part) -> list[dict[str, Any]]:
        """The history events or candidates as the JSON form's items: {key: value} (actions
        as indices into ACTIONS)."""
        features = of_part(part)
        columns = [getattr(self, f.name) for f in features]
        count = len(columns[0])
        return [
            {f.key: _item_value(f, column[i]) for f, column in zip(features, columns, strict=True)}
            for i in range(count)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `from_dict` reads."""
        out: dict[str, Any] = {f.key: int(getattr(self, f.name)) for f in of_part(Part.USER)}
        for part in (Part.HISTORY, Part.CANDIDATE):
            items = self.items(part)
            for item in items:
                for f in of_part(part):
                    if f.kind is Kind.ACTIONS:
                        item[f.key] = [ACTIONS[j] for j in item[f.key]]
            out[part.items] = items
        out["request_id"] = self.request_id
        return out

    def validate(self, config: ModelShape) -> None:
        """Raise RequestError naming the first field the model cannot take."""
        for part in (Part.HISTORY, Part.CANDIDATE):
            features = of_part(part)
            count = len(getattr(self, features[0].name))
            for f in features:
                value = getattr(self, f.name)
                if value.shape != (count, *f.row_shape):
                    where = f"{part.items}.{f.key}"
                    if f.kind is Kind.ACTIONS:
                        raise RequestError(where, f"shape {value.shape} != "
                                           f"({count}, {NUM_ACTIONS})")  # fmt: skip
                    raise RequestError(where, f"has {len(value)} values for {count} items")
        for f in FEATURES:
            if f.vocab is None:
                continue
            values, vocab = getattr(self, f.name), getattr(config, f.vocab)
            bad = np.flatnonzero((values < 0) | (values >= vocab))
            if bad.size:
                i = int(bad[0])
                raise RequestError(
                    f"{f.part.items}[{i}].{f.key}",
                    f"{int(values[i])} is outside the vocabulary [0, {vocab})",
                )


RawRequest = dataclasses.make_dataclass(
    "RawRequest",
    [(f.name, int if f.part is Part.USER else np.ndarray) for f in FEATURES]
    + [("request_id", str, dataclasses.field(default=""))],
    bases=(_RawRequest,),
    frozen=True,
    eq=False,
)
RawRequest.__module__ = __name__
RawRequest.__doc__ = _RawRequest.__doc__


def _from_items(f: Feature, items: Sequence[dict[str, Any]]) -> np.ndarray:
    """A history or candidate feature's column from the JSON form's items (schema-checked)."""
    where = f.part.items
    if f.kind is Kind.ID:
        return _ids(items, f.key, where)
    if f.kind is Kind.ACTIONS:
        out = f.empty(len(items))
        for i, item in enumerate(items):
            for name in item.get(f.key, []):  # names the schema has checked
                out[i, action_index(name)] = 1
        return out
    return np.array([item.get(f.key, 0) for item in items], f.dtype)


def _item_value(f: Feature, value: np.ndarray) -> Any:
    """One item's value of a feature as a Python value (actions: the indices taken)."""
    return np.flatnonzero(value).tolist() if f.kind is Kind.ACTIONS else int(value)


def check_schema(data: Any) -> None:
    """Validate the JSON form against `request.schema`; RequestError naming the field."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise RequestError(where.lstrip(".") or "request", error.message)


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = request_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def _uint64(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise RequestError(field, f"must be an integer in [0, 2**64), got {value!r}")
    return value


def _ids(items: Sequence[dict[str, Any]], key: str, where: str) -> np.ndarray:
    return np.array(
        [_uint64(item.get(key), f"{where}[{i}].{key}") for i, item in enumerate(items)],
        dtype=np.uint64,
    )
