"""Start the real `phoenix-ranker serve` on ephemeral ports and talk to it over real gRPC."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from server.client import RankingClient

STARTUP_TIMEOUT = 300  # seconds: warm-up compiles every batch shape


def phoenix_ranker() -> list[str]:
    """The project's own command (the console script of this environment)."""
    script = Path(sys.executable).with_name("phoenix-ranker")
    if script.exists():
        return [str(script)]
    found = shutil.which("phoenix-ranker")
    return [found] if found else [sys.executable, "-m", "phoenix_ranker"]


class ServerProcess:
    """`phoenix-ranker serve --port 0 --metrics-port 0 --log-json ...`, ready once its log
    stream (stderr, one JSON object a line) has the `serving` event."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 all_shapes: bool = True):  # fmt: skip
        """`all_shapes`: return once every batch shape is compiled (the `compiled_all` event),
        not at `serving`, when the rest are still compiling in the background; tests that
        count compilations or time batches then see a settled server."""
        self.stderr = tempfile.NamedTemporaryFile("w+", prefix="phoenix-serve-", suffix=".log")
        self._log_lock = threading.Lock()
        cmd = [
            *phoenix_ranker(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--log-json",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:  # keeps the pipe drained for the server's whole life
            for line in self.proc.stderr:
                with self._log_lock:
                    self.stderr.write(line)
                    self.stderr.flush()
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                self.kill()
                raise TimeoutError(
                    f"server did not start in {STARTUP_TIMEOUT}s:\n{self.log()}"
                ) from None
            if line is None:
                raise RuntimeError(f"server exited with {self.proc.wait()}:\n{self.log()}")
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "serving":
                    event = record
                    if not all_shapes or record["shapes_ready"] == record["shapes"]:
                        break
                elif record.get("event") == "compiled_all":
                    break
        self.serving_event = event
        self.port = event["port"]
        self.metrics_port = event["metrics_port"]
        self.target = f"127.0.0.1:{self.port}"
        self.client = RankingClient(self.target)

    def log(self) -> str:
        with self._log_lock:
            self.stderr.flush()
            return Path(self.stderr.name).read_text()

    def events(self) -> list[dict]:
        """The log stream's records so far (JSON lines)."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample as {"name{label=value,...}": value} (labels sorted)."""
        samples = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def wait_for_metrics(self, ready, what: str, timeout: float = 10) -> dict[str, float]:
        """Poll `metrics()` until `ready(samples)` holds (the server counts a call just after
        the client has its status; a frontend reports its transport's counts every second);
        returns those samples. AssertionError naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not ready(samples := self.metrics()):
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        return samples

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()
            self.stderr.close()
