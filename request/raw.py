"""A ranking request in raw ids: its columns, its JSON form and its validation.

Glossary: n history events, m candidates, A actions (19).

`RawRequest` is what a client sends, as numpy columns. Its JSON form (what
`phoenix-ranker rank --request FILE` reads; `examples/request.json` is one) is defined by the
JSON Schema in `request.schema`, which `from_dict` validates against before anything else.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from request.actions import ACTIONS, NUM_ACTIONS, action_index
from request.columns import ModelShape
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


@dataclass(frozen=True, eq=False)
class RawRequest:
    """One ranking request in raw ids. History is oldest first; candidates in request order."""

    user_id: int
    history_post_ids: np.ndarray  # uint64 [n]
    history_author_ids: np.ndarray  # uint64 [n]
    history_actions: np.ndarray  # uint8 [n, A], multi-hot over ACTIONS
    history_surface: np.ndarray  # int64 [n], product surface index
    candidate_post_ids: np.ndarray  # uint64 [m]
    candidate_author_ids: np.ndarray  # uint64 [m]
    candidate_surface: np.ndarray  # int64 [m]
    request_id: str = ""

    @property
    def num_candidates(self) -> int:
        return len(self.candidate_post_ids)

    @property
    def num_history(self) -> int:
        return len(self.history_post_ids)

    @classmethod
    def from_dict(cls, data: Any) -> RawRequest:
        """From the JSON form (`request.schema`): actions by name, ids as integers.

        RequestError names the first field that breaks the schema.
        """
        check_schema(data)
        history = data.get("history", [])
        candidates = data.get("candidates", [])
        actions = np.zeros((len(history), NUM_ACTIONS), dtype=np.uint8)
        for i, event in enumerate(history):
            for name in event.get("actions", []):  # names the schema has checked
                actions[i, action_index(name)] = 1
        return cls(
            user_id=_uint64(data.get("user_id"), "user_id"),
            history_post_ids=_ids(history, "post_id", "history"),
            history_author_ids=_ids(history, "author_id", "history"),
            history_actions=actions,
            history_surface=np.array([e.get("product_surface", 0) for e in history], np.int64),
            candidate_post_ids=_ids(candidates, "post_id", "candidates"),
            candidate_author_ids=_ids(candidates, "author_id", "candidates"),
            candidate_surface=np.array([c.get("product_surface", 0) for c in candidates], np.int64),
            request_id=str(data.get("request_id", "")),
        )

    def history_rows(self) -> Iterator[tuple[int, int, list[int], int]]:
        """(post_id, author_id, indices of the actions taken, product_surface) per event."""
        for p, a, acts, s in zip(
            self.history_post_ids,
            self.history_author_ids,
            self.history_actions,
            self.history_surface,
            strict=True,
        ):
            yield int(p), int(a), np.flatnonzero(acts).tolist(), int(s)

    def candidate_rows(self) -> Iterator[tuple[int, int, int]]:
        """(post_id, author_id, product_surface) per candidate."""
        for p, a, s in zip(
            self.candidate_post_ids, self.candidate_author_ids, self.candidate_surface, strict=True
        ):
            yield int(p), int(a), int(s)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RawRequest:
        """Read a request file; RequestError (one line) if it is missing or malformed."""
        return cls.from_dict(read_json_file(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `from_dict` reads."""
        return {
            "user_id": int(self.user_id),
            "history": [
                {
                    "post_id": p,
                    "author_id": a,
                    "actions": [ACTIONS[j] for j in acts],
                    "product_surface": s,
                }
                for p, a, acts, s in self.history_rows()
            ],
            "candidates": [
                {"post_id": p, "author_id": a, "product_surface": s}
                for p, a, s in self.candidate_rows()
            ],
            "request_id": self.request_id,
        }

    def validate(self, config: ModelShape) -> None:
        """Raise RequestError naming the first field the model cannot take."""
        n, m = self.num_history, self.num_candidates
        for name, arr, length in (
            ("history.author_id", self.history_author_ids, n),
            ("history.product_surface", self.history_surface, n),
            ("candidates.author_id", self.candidate_author_ids, m),
            ("candidates.product_surface", self.candidate_surface, m),
        ):
            if len(arr) != length:
                raise RequestError(name, f"has {len(arr)} values for {length} items")
        if self.history_actions.shape != (n, NUM_ACTIONS):
            raise RequestError(
                "history.actions", f"shape {self.history_actions.shape} != ({n}, {NUM_ACTIONS})"
            )
        vocab = config.product_surface_vocab_size
        for where, surfaces in (
            ("history", self.history_surface),
            ("candidates", self.candidate_surface),
        ):
            bad = np.flatnonzero((surfaces < 0) | (surfaces >= vocab))
            if bad.size:
                i = int(bad[0])
                raise RequestError(
                    f"{where}[{i}].product_surface",
                    f"{int(surfaces[i])} is outside the vocabulary [0, {vocab})",
                )


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
