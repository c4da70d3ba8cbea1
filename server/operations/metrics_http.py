"""The HTTP endpoints: /metrics, and the probes /readyz and /healthz, from a small HTTP(S)
server on its own thread and event loop (one on the metrics port, and one more for the probes
alone on `--readiness-port` when asked).

prometheus_client's own `start_http_server` starts one thread per connection and never times
one out, so idle or slow connections pile up threads without limit. This one runs every
connection on one asyncio loop in one thread (a connection costs a socket, not a thread):

- at most `MAX_CONNECTIONS` connections at once; one over that is closed at once (a scraper
  retries at its next interval);
- a connection that sends no complete request within `TIMEOUT_SECONDS` (TLS handshake
  included), or whose request head exceeds `MAX_HEAD_BYTES`, is closed;
- `GET /metrics` answers the registry (text or OpenMetrics, by the Accept header);
  `GET /readyz` 200 while the server takes traffic, else 503 with why (warming up, no version
  may serve, shutting down: `Probes.readiness`); `GET /healthz` 200 while the process works
  (its event loop turns, its batcher runs), else 503 (`Probes.liveness`); `GET /` a pointer,
  anything else 404 / 405; HTTP/1.1 keep-alive is honoured;
- optionally TLS, requiring a client certificate signed by `client_ca` when given.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

MAX_CONNECTIONS = 256
TIMEOUT_SECONDS = 5.0
MAX_HEAD_BYTES = 16 * 1024


class MetricsPortInUse(OSError):
    """The metrics port is taken (a one-line start-up error, not a traceback)."""


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server-side TLS context; with `client_ca`, clients must present a certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class Probes:
    """What /readyz and /healthz ask: (ok, why) each; any thread, cheap."""

    readiness: Callable[[], tuple[bool, str]]
    liveness: Callable[[], tuple[bool, str]]


def _response(status: str, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}"
        "\r\n\r\n"
    )
    return head.encode() + body


class MetricsHTTPServer:
    """/metrics for one registry on `host:port` (0: a free port); see the module docstring."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None,
                 context: ssl.SSLContext | None = None, probes: Probes | None = None,
                 refresh: Callable[[], None] | None = None):  # fmt: skip
        """`registry` None: no /metrics (the probes' own port); `probes` None: no probes;
        `refresh()`: called before each scrape (counts kept elsewhere moved into the registry)."""
        self.registry = registry
        self.refresh = refresh
        self.context = context
        self.probes = probes
        self.connections = 0  # open now
        self.refused = 0  # closed at once for being over MAX_CONNECTIONS
        self._loop = asyncio.new_event_loop()
        self._socket = _bind(host, port)
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._started = threading.Event()
        self._server: asyncio.Server | None = None

    def start(self) -> MetricsHTTPServer:
        self._thread.start()
        self._started.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        tls = (
            {"ssl": self.context, "ssl_handshake_timeout": TIMEOUT_SECONDS} if self.context else {}
        )
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self._socket, limit=MAX_HEAD_BYTES, **tls)
        )
        self._started.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            self.refused += 1
            writer.transport.abort()
            return
        self.connections += 1
        try:
            keep_alive = True
            while keep_alive:
                async with asyncio.timeout(TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
                    reply, keep_alive = self._answer(head)
                    writer.write(reply)
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ssl.SSLError):  # fmt: skip
            pass  # silent, slow, oversized or gone: the connection is closed
        finally:
            self.connections -= 1
            writer.transport.abort()

    def _answer(self, head: bytes) -> tuple[bytes, bool]:
        """The response to one request head, and whether the connection stays open."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response("400 Bad Request", b"bad request\n", "text/plain", False), False
        method, target, version = parts
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        path = target.split("?", 1)[0]
        if method != "GET":
            reply = _response("405 Method Not Allowed", b"GET only\n", "text/plain", keep_alive)
        elif path == "/metrics" and self.registry is not None:
            if self.refresh is not None:
                self.refresh()
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            reply = _response("200 OK", encoder(self.registry), content_type, keep_alive)
        elif path in ("/readyz", "/healthz") and self.probes is not None:
            probe = self.probes.readiness if path == "/readyz" else self.probes.liveness
            ok, why = probe()
            status = "200 OK" if ok else "503 Service Unavailable"
            reply = _response(status, why.encode() + b"\n", "text/plain", keep_alive)
        elif path == "/":
            body = b"phoenix-ranker: /metrics, /readyz, /healthz\n"
            reply = _response("200 OK", body, "text/plain", keep_alive)
        else:
            reply = _response("404 Not Found", b"not found\n", "text/plain", keep_alive)
        return reply, keep_alive


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; "::" falls back to IPv4 on hosts without IPv6, as
    gRPC itself does. MetricsPortInUse if the port is taken."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        if host != "::":
            raise
        family, host = socket.AF_INET, "0.0.0.0"
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise MetricsPortInUse(
                f"cannot serve /metrics on {host}:{port}: {e.strerror}"
            ) from None
        raise
    sock.setblocking(False)
    return sock


def start_metrics_http(host: str, port: int, registry: CollectorRegistry | None,
                       context: ssl.SSLContext | None = None, probes: Probes | None = None,
                       refresh: Callable[[], None] | None = None) -> MetricsHTTPServer:  # fmt: skip
    """Serve /metrics (and the probes) on `host:port` in a thread of its own (see
    MetricsHTTPServer)."""
    return MetricsHTTPServer(host, port, registry, context, probes, refresh).start()
