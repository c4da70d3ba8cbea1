"""The JSON Schema of a request file (`phoenix-ranker rank --request FILE`).

The schema is built here from the action names, so it cannot drift from them; the copy in
`request/request.schema.json` is for readers and other tools (`python -m request.schema`
rewrites it; a test fails when it is stale). `RawRequest.from_dict` validates against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from request.actions import ACTIONS

UINT64_MAX = 2**64 - 1
MAX_REQUEST_ID_BYTES = 128
SCHEMA_PATH = Path(__file__).with_name("request.schema.json")


def _id(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": UINT64_MAX, "description": description}


def _surface() -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 0,
        "default": 0,
        "description": "product surface index, below the model's product_surface_vocab_size",
    }


def request_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one ranking request."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Phoenix ranking request",
        "description": "One user, their engagement history (oldest first) and the candidate "
        "posts to score. Ids are unsigned 64-bit integers.",
        "type": "object",
        "required": ["user_id"],
        "additionalProperties": False,
        "properties": {
            "user_id": _id("the user being ranked for"),
            "request_id": {
                "type": "string",
                "maxLength": MAX_REQUEST_ID_BYTES,
                "description": "echoed in the response and the logs; the server makes one "
                "up when empty",
            },
            "history": {
                "type": "array",
                "description": "engagement history, oldest first; the model keeps the newest "
                "history_seq_len events",
                "items": {
                    "type": "object",
                    "required": ["post_id", "author_id"],
                    "additionalProperties": False,
                    "properties": {
                        "post_id": _id("the post engaged with"),
                        "author_id": _id("its author"),
                        "actions": {
                            "type": "array",
                            "items": {"enum": list(ACTIONS)},
                            "uniqueItems": True,
                            "default": [],
                            "description": "the actions the user took on the post",
                        },
                        "product_surface": _surface(),
                    },
                },
            },
            "candidates": {
                "type": "array",
                "description": "the posts to score; scores come back in this order",
                "items": {
                    "type": "object",
                    "required": ["post_id", "author_id"],
                    "additionalProperties": False,
                    "properties": {
                        "post_id": _id("the candidate post"),
                        "author_id": _id("its author"),
                        "product_surface": _surface(),
                    },
                },
            },
        },
    }


def render() -> str:
    return json.dumps(request_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}")
