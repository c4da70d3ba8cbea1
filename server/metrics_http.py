"""The /metrics endpoint: a small HTTP(S) server with bounded threads and timeouts.

prometheus_client's own `start_http_server` starts one thread per connection and never times
one out, so idle or slow connections pile up threads without limit. This one:

- serves at most `MAX_CONNECTIONS` connections at once; a connection over that is closed at
  once (a scraper retries at its next interval);
- gives each connection `TIMEOUT_SECONDS` for any read or write (TLS handshake included), so
  a silent or stalled client costs a thread for that long at most;
- answers `GET /metrics` (text or OpenMetrics, by the Accept header) and `GET /` with a
  pointer, 404 otherwise; HTTP/1.1 keep-alive is honoured within the timeout;
- optionally speaks TLS, requiring a client certificate signed by `client_ca` when given.
"""

from __future__ import annotations

import errno
import http.server
import socket
import socketserver
import ssl
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

MAX_CONNECTIONS = 16
TIMEOUT_SECONDS = 5.0


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


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_SECONDS  # per read and write on the connection
    server: MetricsHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (the http.server convention)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.server.registry), content_type)
        elif path == "/":
            self._reply(200, b"phoenix-ranker: metrics at /metrics\n", "text/plain")
        else:
            self._reply(404, b"not found\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # scrapes are not news
        pass


class MetricsHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """HTTP server for one registry; see the module docstring for its bounds."""

    daemon_threads = True
    block_on_close = False  # keep no list of finished threads
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 context: ssl.SSLContext | None = None):  # fmt: skip
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.context = context
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        try:
            super().__init__(address, _Handler)
        except OSError as e:
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            raise MetricsPortInUse(
                f"cannot serve /metrics on {host}:{address[1]}: {e.strerror}"
            ) from None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the connection bound: close at once
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            request.settimeout(TIMEOUT_SECONDS)
            if self.context is not None:
                request = self.context.wrap_socket(request, server_side=True)
            super().process_request_thread(request, client_address)
        except (OSError, ssl.SSLError):  # a failed handshake or a peer that went away
            self.shutdown_request(request)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # timeouts and resets of one scrape connection are not errors of the service

    def start(self) -> MetricsHTTPServer:
        threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_metrics_http(host: str, port: int, registry: CollectorRegistry,
                       context: ssl.SSLContext | None = None) -> MetricsHTTPServer:  # fmt: skip
    """Serve /metrics on `host:port` (0: a free port); "::" falls back to IPv4 on hosts
    without IPv6, as gRPC itself does. Raises MetricsPortInUse if the port is taken."""
    host = host.strip("[]")
    try:
        return MetricsHTTPServer((host, port), registry, context).start()
    except MetricsPortInUse:
        raise
    except OSError:
        if host != "::":
            raise
        return MetricsHTTPServer(("0.0.0.0", port), registry, context).start()
