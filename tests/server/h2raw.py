"""A raw HTTP/2 connection, byte by byte, for what a well-behaved gRPC client never does:
stay silent, open a call and never send its body, ping in a tight loop.

Frames (RFC 9113 section 4.1): 3-byte length, type, flags, 4-byte stream id, payload.
Headers are HPACK literals without indexing or Huffman coding (RFC 7541 section 6.2.2).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
ACK, END_HEADERS = 0x1, 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
ENHANCE_YOUR_CALM = 0xB


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes


def frame(kind: int, flags: int = 0, stream: int = 0, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    name_b, value_b = name.encode(), value.encode()
    assert len(name_b) < 127 and len(value_b) < 127
    return b"\x00" + bytes([len(name_b)]) + name_b + bytes([len(value_b)]) + value_b


class RawH2:
    """One client connection to `port` on 127.0.0.1, after the HTTP/2 preface and SETTINGS
    exchange (`server_settings` holds the server's SETTINGS)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS))
        self.server_settings: dict[int, int] = {}
        while True:
            f = self.read()
            if f is None:
                raise ConnectionError("closed during the handshake")
            if f.type == SETTINGS and not f.flags & ACK:
                for i in range(0, len(f.payload), 6):
                    key, value = struct.unpack(">HI", f.payload[i : i + 6])
                    self.server_settings[key] = value
                self.sock.sendall(frame(SETTINGS, ACK))
                break

    def read(self) -> Frame | None:
        """The next frame; None when the server closed the connection."""
        while True:
            if len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) >= 9 + length:
                    kind, flags = self._buffer[3], self._buffer[4]
                    stream = struct.unpack(">I", self._buffer[5:9])[0] & 0x7FFFFFFF
                    payload = self._buffer[9 : 9 + length]
                    self._buffer = self._buffer[9 + length :]
                    return Frame(kind, flags, stream, payload)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            self._buffer += chunk

    def wait_for_close(self) -> tuple[float, list[Frame]]:
        """Read until the server closes: (seconds it took, the GOAWAY frames seen)."""
        started, goaways = time.monotonic(), []
        while (f := self.read()) is not None:
            if f.type == GOAWAY:
                goaways.append(f)
            elif f.type == PING and not f.flags & ACK:
                self.sock.sendall(frame(PING, ACK, 0, f.payload))
        return time.monotonic() - started, goaways

    def start_call(self, path: str, stream: int = 1) -> None:
        """Open a gRPC call (its headers) and send no body, ever."""
        block = b"".join(
            _literal(k, v)
            for k, v in (
                (":method", "POST"), (":scheme", "http"), (":path", path),
                (":authority", "localhost"), ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )  # fmt: skip
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, block))

    def ping(self, data: bytes = b"12345678") -> None:
        self.sock.sendall(frame(PING, 0, 0, data))

    def close(self) -> None:
        self.sock.close()


def goaway_error(f: Frame) -> tuple[int, bytes]:
    """(error code, debug data) of a GOAWAY frame."""
    _, code = struct.unpack(">II", f.payload[:8])
    return code, f.payload[8:]
