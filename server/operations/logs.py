"""Logging set-up: human-readable text or JSON lines, one record per line.

Structured fields go in `extra={"fields": {...}}`; the JSON formatter merges them into the
record, the text formatter appends them as key=value.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Control characters (newlines above all) in logged values would let a caller forge log
# lines: the text format writes them escaped, the way repr() would.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",  # Unicode's line and paragraph separators
    0x2029: "\\u2029",
}


def escape(text: str) -> str:
    """`text` with control characters escaped: one log record stays one line."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, one line per record (a traceback, when
    there is one, follows on the lines after it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={escape(str(v))}" for k, v in fields.items())
        return line


class RateLimited:
    """Log at most one record per `interval` seconds; the next one says how many were
    suppressed meanwhile (for events a caller can trigger at will, e.g. bad requests)."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0):
        self.logger, self.interval = logger, interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args, fields: dict | None = None) -> None:
        self.log(logging.WARNING, message, *args, fields=fields)

    def error(self, message: str, *args, fields: dict | None = None) -> None:
        self.log(logging.ERROR, message, *args, fields=fields)

    def log(self, level: int, message: str, *args, fields: dict | None = None) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.interval
        fields = dict(fields or {})
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            self._suppressed = 0
        self.logger.log(level, message, *args, extra={"fields": fields})


def configure(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # JAX logs at INFO that it found no TPU on every start; that is not news.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
