"""What every request must hold whatever its contract, checked before its fields are read:
its size within `Limits.max_request_bytes` (before parsing: an oversize request costs
nothing) and its request id within `request.schema.MAX_REQUEST_ID_BYTES`."""

from __future__ import annotations

from request.schema import MAX_REQUEST_ID_BYTES
from server.config import Limits
from server.errors import InvalidArgument


def check_size(size: int, limits: Limits) -> None:
    """InvalidArgument ("request") for a request of `size` bytes over the limit."""
    if size > limits.max_request_bytes:
        raise InvalidArgument(
            "request", f"{size} bytes exceeds the server's limit of {limits.max_request_bytes}"
        )


def check_request_id(request_id: str, field: str) -> None:
    """InvalidArgument naming `field` for a request id longer than MAX_REQUEST_ID_BYTES."""
    if len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument(field, f"longer than {MAX_REQUEST_ID_BYTES} bytes")
