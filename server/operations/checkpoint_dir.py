"""Versioned checkpoints in a directory, TF Serving's convention: `<N>.safetensors` for an
integer version N. Which version should serve is a pure decision over a directory listing.

Other names are ignored (a file being copied in under a temporary name, then renamed, is seen
only once complete). A version that failed to load is not tried again until its file changes
(another size or modification time), so a broken file costs one log line, not one per poll;
so does anything else with a version's name (a directory, a FIFO, a dangling symlink).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

VERSION_FILE = re.compile(r"^(0|[1-9][0-9]{0,17})\.safetensors$")


class ReloadState(NamedTuple):
    """What a ReloadModel call reports (`server.engine.reload.VersionWatcher.state`)."""

    in_progress: bool  # a check of the directory, or a swap, is under way
    checkpoint_timestamp: float  # when the serving checkpoint was written (epoch s; 0 unknown)
    serving_version: str


class VersionFile(NamedTuple):
    """One version's file as last seen (a changed file is a different VersionFile)."""

    number: int
    path: Path
    size: int
    mtime_ns: int


def scan(directory: Path) -> list[VersionFile]:
    """The version files in `directory`, highest version first (OSError if unreadable).

    Every entry with a version's name is listed, whatever it is (a FIFO, a directory, a
    dangling symlink...): the loader refuses what is not a checkpoint, once per state. A
    symlink's state is its target's, or its own where it leads nowhere. Nothing is opened."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = VERSION_FILE.match(entry.name)
            if match is None:
                continue
            try:
                stat = _stat(entry)
            except FileNotFoundError:  # removed while we looked
                continue
            found.append(VersionFile(int(match[1]), Path(entry.path), stat.st_size,
                                     stat.st_mtime_ns))  # fmt: skip
    return sorted(found, key=lambda v: v.number, reverse=True)


def _stat(entry: os.DirEntry) -> os.stat_result:
    try:
        return entry.stat()
    except OSError:  # a dangling or looping symlink, an unreadable target
        return entry.stat(follow_symlinks=False)


def file_version(path: Path) -> VersionFile:
    """One checkpoint file served on its own (`--checkpoint`) as a version: number 0, its
    state now (OSError if it cannot be looked at)."""
    stat = os.stat(path)
    return VersionFile(0, Path(path), stat.st_size, stat.st_mtime_ns)


def candidates(available: list[VersionFile], refused: set[VersionFile]) -> list[VersionFile]:
    """The versions worth loading, best first: every available one not already refused as
    it is now. The first of them that loads should serve (a rollback is removing the
    newest: the next one down then comes first)."""
    return [v for v in available if v not in refused]
