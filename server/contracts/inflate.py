"""Budgeted inflation: every path by which a few request bytes become many draws from one
budget per call, checked before the bytes are allocated (STYLE.md 20).

Policy: a request may inflate to no more than it could have been sent as. A call's budget is
`Limits.max_request_bytes` less the request's own bytes; every inflation the call makes (a
zstd-compressed history, the compressed buffers of an Arrow stream: `server.contracts.arrow_stream`)
draws its output from it. A draw past what is left is refused, InvalidArgument naming the
field: before anything is allocated where the size is declared (a zstd frame's content size,
an Arrow buffer's length prefix), and as soon as the output passes it where it is not.

zstandard is imported on first use (a frontend worker that never sees zstd never loads it).
"""

from __future__ import annotations

import dataclasses

from server.config import Limits
from server.errors import InvalidArgument

# The largest zstd window accepted, 8 MiB: what a streaming compressor writes at levels up to
# 19 (2 MiB at the default level 3). A frame that asks for more is refused, not allocated:
# without a declared content size, zstd allocates its whole window to decompress a frame.
MAX_WINDOW_BYTES = 1 << 23
# The most zstd frames (skippable ones included) in one input: a compressor writes one, a
# parallel one one per few MiB, each with a skippable frame; each costs ~2 us of Python here.
MAX_FRAMES = 64


@dataclasses.dataclass
class Budget:
    """The output bytes one call may still inflate to."""

    left: int
    limit: int  # Limits.max_request_bytes, for messages

    @classmethod
    def for_request(cls, size: int, limits: Limits) -> Budget:
        """The budget of a call whose request is `size` bytes."""
        return cls(max(0, limits.max_request_bytes - size), limits.max_request_bytes)

    def draw(self, size: int, where: str, exact: bool = True) -> None:
        """Take `size` bytes (`exact` False: at least `size`, counting stopped past what is
        left); InvalidArgument naming `where` when fewer are left."""
        if size > self.left:
            over = (
                f"{size} bytes, over the {self.left}"
                if exact
                else f"more than the {self.left} bytes"
            )
            raise InvalidArgument(
                where,
                f"inflates to {over} left of this request's budget "
                f"(max_request_bytes={self.limit} less the request's own bytes and what it "
                "has inflated to already)",
            )
        self.left -= size


def zstd(data: bytes, budget: Budget, where: str) -> bytes:
    """The content of `data`, zstd frames (several concatenate their contents; skippable
    frames hold none), drawn from `budget`. InvalidArgument naming `where` for bytes that are
    not zstd, a declared size or window over the bounds, or output past the budget."""
    import zstandard

    try:
        declared = zstandard.frame_content_size(data)  # the first frame's; -1: not declared
    except zstandard.ZstdError:
        raise InvalidArgument(where, "not zstd (no valid frame header)") from None
    if declared > budget.left:
        budget.draw(declared, where)  # refused before anything is allocated
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    try:
        out = _one_frame(decompressor, data, declared)
        if out is None:  # several frames, no declared size, or not zstd: count, then inflate
            budget.draw(_inflated_size(decompressor, data, budget.left), where, exact=False)
            return _frames(decompressor, data)
    except zstandard.ZstdError as e:
        raise InvalidArgument(where, f"not valid zstd ({e})") from None
    budget.draw(len(out), where)
    return out


_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first bytes (a skippable one's differ)


def _one_frame(decompressor, data: bytes, declared: int) -> bytes | None:
    """The content of `data` when it is one frame declaring `declared` bytes (what a one-shot
    compressor writes), inflated in one pass into exactly that many bytes; None otherwise.
    (zstandard allocates the size the frame's header declares, whatever it is told: a
    skippable frame's, or any frame's, before the caller has checked it.)"""
    import zstandard

    if declared <= 0 or data[:4] != _FRAME_MAGIC:
        return None
    try:
        return decompressor.decompress(data, allow_extra_data=False)
    except zstandard.ZstdError:  # more frames or bytes after it, or not valid: see the slow path
        return None


# Output bytes per read while counting: what counting a bomb holds at once.
READ_BYTES = 256 * 1024


def _inflated_size(decompressor, data: bytes, most: int) -> int:
    """What `data` inflates to, counted in bounded reads and stopped one byte past `most`."""
    reader = decompressor.stream_reader(data, read_across_frames=True)
    size = 0
    while size <= most and (chunk := reader.read(min(READ_BYTES, most + 1 - size))):
        size += len(chunk)
    return size


def _frames(decompressor, data: bytes) -> bytes:
    """The content of `data`'s frames, each decoded to its end: ZstdError for a frame cut
    short (a streaming reader reads those silently) or more than MAX_FRAMES. Call it once
    `_inflated_size` has bounded the output."""
    import zstandard

    out = []
    while data:
        if len(out) == MAX_FRAMES:
            raise zstandard.ZstdError(f"more than {MAX_FRAMES} frames")
        frame = decompressor.decompressobj()
        out.append(frame.decompress(data))
        if not frame.eof:
            raise zstandard.ZstdError("the last frame is cut short")
        data = frame.unused_data
    return out[0] if len(out) == 1 else b"".join(out)
