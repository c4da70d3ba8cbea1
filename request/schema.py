"""The JSON Schema of a request file (`phoenix-ranker rank --request FILE`).

The schema is built here from the request's features and the action names, so it cannot
drift from them; the copy in
`request/request.schema.json` is for readers and other tools (`python -m request.schema`
rewrites it; a test fails when it is stale). `RawRequest.from_dict` validates against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from request.actions import ACTIONS
from request.features import Feature, Kind, Part, of_part

UINT64_MAX = 2**64 - 1
MAX_REQUEST_ID_BYTES = 128
SCHEMA_PATH = Path(__file__).with_name("request.schema.json")


def _property(f: Feature) -> dict[str, Any]:
    """The JSON Schema of one feature's value."""
    if f.kind is Kind.ID:
        return {"type": "integer", "minimum": 0, "maximum": UINT64_MAX, "description": f.doc}
    if f.kind is Kind.ACTIONS:
        return {"type": "array", "items": {"enum": list(ACTIONS)}, "uniqueItems": True,
                "default": [], "description": f.doc}  # fmt: skip
    return {"type": "integer", "minimum": 0, "default": 0,
            "description": f"{f.doc}: an index below the model's {f.vocab}"}  # fmt: skip


def _items(part: Part, description: str) -> dict[str, Any]:
    features = of_part(part)
    return {
        "type": "array",
        "description": description,
        "items": {
            "type": "object",
            "required": [f.key for f in features if f.kind is Kind.ID],
            "additionalProperties": False,
            "properties": {f.key: _property(f) for f in features},
        },
    }


def request_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one ranking request: its features (`request.features`)."""
    user = of_part(Part.USER)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Phoenix ranking request",
        "description": "One user, their engagement history (oldest first) and the candidate "
        "posts to score. Ids are unsigned 64-bit integers.",
        "type": "object",
        "required": [f.key for f in user if f.kind is Kind.ID],
        "additionalProperties": False,
        "properties": {
            **{f.key: _property(f) for f in user},
            "request_id": {
                "type": "string",
                "maxLength": MAX_REQUEST_ID_BYTES,
                "description": "echoed in the response and the logs; the server makes one "
                "up when empty",
            },
            Part.HISTORY.items: _items(
                Part.HISTORY,
                "engagement history, oldest first; the "
                "model keeps the newest history_seq_len events",
            ),
            Part.CANDIDATE.items: _items(
                Part.CANDIDATE, "the posts to score; scores come back in this order"
            ),
        },
    }


def render() -> str:
    return json.dumps(request_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}")
