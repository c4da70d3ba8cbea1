"""Protobuf's wire format, written by hand where responses are assembled as bytes (numpy rows
of preformatted fields: `server.contracts.convert`, `server.contracts.xai`) rather than through message objects."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """A non-negative int as a base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, data: bytes) -> bytes:
    """Field `number` holding `data` (wire type 2: bytes, strings, messages, packed)."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def present_bytes(number: int, data: bytes) -> bytes:
    """Field `number` holding `data`, or nothing when `data` is empty (proto3's default is
    never written)."""
    return length_delimited(number, data) if data else b""
