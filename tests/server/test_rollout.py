"""A rolling restart behind a balancer that only polls readiness over HTTP, as xAI's
home-mixer does by default (`/readyz`): two replicas restarted one after the other under
load, every call OK.

The balancer here is the test's: a thread polls each replica's `/readyz` every second, and 16
client threads send each call (no retries) to a replica that last answered 200. A replica
answers 503 while it warms up, and from SIGTERM on while it still answers calls for
--drain-delay-seconds (the lame duck), so the balancer stops sending before anything is
refused.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from server.contracts.convert import raw_request_to_columnar_pb
from tests.helpers import random_request
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import phoenix_ranker

pytestmark = pytest.mark.slow

POLL_SECONDS = 1.0
DRAIN_DELAY_SECONDS = 3.0
RANK = "/phoenix.ranking.v1.RankingService/Rank"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One `phoenix-ranker serve` on fixed ports (so that it keeps them across restarts)."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env
        self.port, self.readiness_port = _free_port(), _free_port()
        self.proc: subprocess.Popen | None = None
        self.sigterm_at: float | None = None

    def start(self) -> None:
        self.sigterm_at = None
        self.proc = subprocess.Popen(
            [*phoenix_ranker(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", "0", "--readiness-port", str(self.readiness_port), "--log-json",
             "--drain-delay-seconds", str(DRAIN_DELAY_SECONDS), "--grace-seconds", "15",
             *SMALL_PLAN],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **self.env},
        )  # fmt: skip

    def stop(self) -> int:
        self.sigterm_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def readyz(self) -> int | None:
        """/readyz's status, None when nothing answers (not listening yet, or gone)."""
        url = f"http://127.0.0.1:{self.readiness_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None


class Balancer:
    """Polls each replica's /readyz every `poll_s`; routes calls to those that said 200."""

    def __init__(self, replicas: list[Replica], poll_s: float = POLL_SECONDS):
        self.replicas = replicas
        self.ready: list[Replica] = []
        self.seen: list[tuple[float, str, int | None]] = []  # (when, replica, status)
        self.stop = threading.Event()
        self.poll_s = poll_s
        self._turn = itertools.count()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            ready = []
            for r in self.replicas:
                status = r.readyz()
                self.seen.append((time.monotonic(), r.name, status))
                if status == 200:
                    ready.append(r)
            self.ready = ready
            self.stop.wait(self.poll_s)

    def pick(self) -> Replica | None:
        ready = self.ready
        return ready[next(self._turn) % len(ready)] if ready else None

    def wait_ready(self, replica: Replica, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while replica not in self.ready:
            assert replica.proc.poll() is None, f"{replica.name} exited"
            assert time.monotonic() < deadline, f"{replica.name} never ready"
            time.sleep(0.1)


def test_a_rolling_restart_behind_a_readiness_polling_balancer_loses_no_call(compilation_cache):
    replicas = [Replica("a", compilation_cache), Replica("b", compilation_cache)]
    balancer = Balancer(replicas)
    observer = Balancer(replicas, poll_s=0.02)  # what /readyz says, closely: never routes
    payload = raw_request_to_columnar_pb(
        random_request(np.random.default_rng(8), 16, 32)
    ).SerializeToString()
    results: list[tuple[float, str, grpc.StatusCode]] = []
    channels: dict[tuple[str, int], grpc.Channel] = {}
    sending = threading.Event()

    def client() -> None:
        while sending.is_set():
            replica = balancer.pick()
            if replica is None:
                time.sleep(0.01)
                continue
            key = (replica.name, replica.port)
            channel = channels.setdefault(key, grpc.insecure_channel(f"127.0.0.1:{replica.port}"))
            try:
                channel.unary_unary(RANK)(payload, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            results.append((time.monotonic(), replica.name, code))

    try:
        for r in replicas:
            r.start()
        balancer.thread.start()
        observer.thread.start()
        for r in replicas:
            balancer.wait_ready(r)
        sending.set()
        clients = [threading.Thread(target=client) for _ in range(16)]
        for t in clients:
            t.start()
        time.sleep(2)  # load on both before the rollout (what is measured: calls meanwhile)
        exits, sigterms, restarts = {}, {}, {}
        for r in replicas:
            exits[r.name] = r.stop()
            sigterms[r.name] = r.sigterm_at
            restarts[r.name] = time.monotonic()
            r.start()
            balancer.wait_ready(r)
        time.sleep(2)  # load on both after it
        sending.clear()
        for t in clients:
            t.join(30)
    finally:
        balancer.stop.set()
        observer.stop.set()
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.kill()
        for channel in channels.values():
            channel.close()

    codes = [code for _, _, code in results]
    failed = [
        (round(t, 2), name, code.name) for t, name, code in results if code != grpc.StatusCode.OK
    ]
    print(json.dumps({"calls": len(codes), "failed": len(failed)}))
    assert len(codes) > 200 and not failed, failed[:10]
    assert exits == {"a": 0, "b": 0}
    for r in replicas:
        began = sigterms[r.name]
        # After SIGTERM: /readyz said 503 while the replica still answered calls.
        said_503 = [t for t, name, status in observer.seen if name == r.name and t > began
                    and status == 503]  # fmt: skip
        assert said_503, f"{r.name}: no 503 after SIGTERM"
        answered_after = [t for t, name, code in results if name == r.name and t > began
                          and t < began + DRAIN_DELAY_SECONDS and code == grpc.StatusCode.OK]  # fmt: skip
        assert answered_after, f"{r.name}: no call answered in its lame duck"
        assert min(said_503) < max(answered_after), "not ready before it stopped answering"
        # While the new process warmed up, /readyz answered 503 before it answered 200.
        restarted = [status for t, name, status in observer.seen
                     if name == r.name and t > restarts[r.name]]  # fmt: skip
        first_200 = restarted.index(200)
        assert 503 in restarted[:first_200], restarted[: first_200 + 1]
