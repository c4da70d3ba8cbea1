"""Markdown tables generated from the code and kept in the docs: one way to refresh them.

A generated table is found in a document by its header line and replaced up to the blank
line that ends it. `server.flags` (the serve options) and `server.operations.metrics` (the exported
series) render their tables; `python -m server.flags --update-docs` and
`python -m server.operations.metrics --update-docs` write them; tests fail while a copy is stale.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def replace_table(path: Path, table: str) -> bool:
    """Replace the table in `path` that starts with `table`'s header line; True if it changed.
    ValueError if the document holds no such table."""
    text = path.read_text()
    header = table.splitlines()[0]
    start = text.find(header)
    if start < 0:
        raise ValueError(f"{path} has no table headed {header!r}")
    end = text.find("\n\n", start)
    end = len(text) if end < 0 else end
    new = text[:start] + table + text[end:]
    path.write_text(new)
    return new != text
