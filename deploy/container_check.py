"""Run a built image with podman and check it through its published ports (called by
deploy/container-test.sh, which builds the image; usable alone on any built image).

    python deploy/container_check.py --image phoenix-ranker:test [--runtime runc]

Checks, each an assertion: the image declares the HEALTHCHECK, the cache VOLUME and a
non-root user; a fresh container (empty cache volume) reports SERVING over the published gRPC
port, then compiles its remaining shapes; one Rank call's logits equal this host's offline ranker's
for the same request to float32 rounding (same model, same pinned jax, another layout); /metrics answers through the published metrics port with the
process_* series; the server runs as uid 10001; SIGTERM (`podman stop`) drains and exits 0
within the grace period. Then a second container on the same volume (a restart) must warm up
from the compilation cache. Prints the figures as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from model import Ranker  # noqa: E402
from model.checkpoint import default_checkpoint_path  # noqa: E402
from request.raw import RawRequest  # noqa: E402
from request.synthetic import synthetic_request_dict  # noqa: E402
from server.client import RankingClient  # noqa: E402
from server.contracts.convert import logits_from_pb, raw_request_to_pb  # noqa: E402

GRACE_SECONDS = 10
START_TIMEOUT = 600  # seconds: a cold warm-up in a busy container took up to ~245 s
UID = "10001"


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


class Container:
    def __init__(self, image: str, name: str, volume: str, runtime: str | None,
                 small_plan: bool = True):  # fmt: skip
        self.name = name
        runtime_args = ["--runtime", runtime] if runtime else []
        # A small batch plan: a few shapes to compile, so the check takes seconds.
        plan = ["-e", "PHOENIX_MAX_BATCH_SIZE=4", "-e", "PHOENIX_CANDIDATE_BUCKETS=8,32"]
        self.started = time.monotonic()
        podman("run", "-d", *runtime_args, "--name", name,
               # This host's root cannot raise limits past the current hard ones.
               "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
               "-p", "127.0.0.1::50051", "-p", "127.0.0.1::9464",
               "-v", f"{volume}:/var/cache/phoenix", *(plan if small_plan else []),
               "-e", f"PHOENIX_GRACE_SECONDS={GRACE_SECONDS}", image)  # fmt: skip
        self.grpc_port = self._port(50051)
        self.metrics_port = self._port(9464)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def _port(self, inner: int) -> int:
        return int(podman("port", self.name, f"{inner}/tcp").rsplit(":", 1)[1])

    def wait_serving(self) -> float:
        """Seconds from `podman run` to health SERVING through the published port."""
        deadline = self.started + START_TIMEOUT
        with RankingClient(self.target, timeout=2) as client:
            while time.monotonic() < deadline:
                if podman("inspect", self.name, "--format", "{{.State.Running}}") != "true":
                    raise AssertionError(f"container exited:\n{self.logs()}")
                try:
                    if client.health(timeout=2) == "SERVING":
                        return time.monotonic() - self.started
                except grpc.RpcError:
                    pass
                time.sleep(0.5)  # polling a real condition, with a deadline
        raise AssertionError(f"not SERVING after {START_TIMEOUT}s:\n{self.logs()}")

    def wait_all_shapes(self) -> float:
        """Seconds from `podman run` to the `compiled_all` log record: every batch shape
        compiled (after SERVING they compile in the background)."""
        deadline = self.started + START_TIMEOUT
        while '"event": "compiled_all"' not in self.logs():
            if time.monotonic() > deadline:
                raise AssertionError(f"shapes still compiling after {START_TIMEOUT}s")
            time.sleep(0.5)  # polling a real condition, with a deadline
        return time.monotonic() - self.started

    def stop(self) -> tuple[int, float]:
        """SIGTERM (podman stop, killing only after 3x the grace): (exit code, seconds)."""
        t0 = time.monotonic()
        podman("stop", "-t", str(3 * GRACE_SECONDS), self.name, timeout=120)
        seconds = time.monotonic() - t0
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}")), seconds

    def logs(self) -> str:
        """The server's log (it writes to stderr, which `podman logs` passes through)."""
        out = subprocess.run(["podman", "logs", self.name], capture_output=True, text=True)
        return (out.stdout + out.stderr)[-20000:]

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def check_image(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image))[0]
    config = inspected["Config"]
    health = inspected.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "health" in " ".join(health.get("Test", [])), f"no HEALTHCHECK: {health}"
    start_period_s = health.get("StartPeriod", 0) / 1e9
    assert start_period_s >= 240, f"HEALTHCHECK start period {start_period_s}s < a cold warm-up"
    assert "/var/cache/phoenix" in (config.get("Volumes") or {}), config.get("Volumes")
    assert config.get("User", "").split(":")[0] == UID, config.get("User")
    emit({"image": image, "healthcheck_start_period_s": start_period_s,
          "volumes": sorted(config["Volumes"]), "user": config["User"]})  # fmt: skip


def check_container(container: Container) -> None:
    raw = RawRequest.from_dict(synthetic_request_dict(3, 40, 37, 16))  # 37: 2 windows of 32
    expected = Ranker.from_checkpoint(default_checkpoint_path()).logits(raw)
    with RankingClient(container.target, timeout=30) as client:
        response = client.rank(raw_request_to_pb(raw))
    served = logits_from_pb(response)
    assert served.shape == expected.shape, (served.shape, expected.shape)
    # The server computes a prefix once and its candidates in chunks, whose shapes depend on
    # which shapes are compiled yet; the host's offline forward is the one-pass layout. The
    # same model either way, to float32 rounding (the parity tolerance), not bit for bit.
    difference = float(np.max(np.abs(served - expected)))
    assert difference <= 1e-5, f"logits differ from this host's by up to {difference}"
    url = f"http://127.0.0.1:{container.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        metrics = r.read().decode()
    assert 'phoenix_requests_total{code="OK",method="Rank"} 1.0' in metrics
    assert "process_resident_memory_bytes" in metrics
    uid = podman("exec", container.name, "id", "-u")
    assert uid == UID, f"the server runs as uid {uid}"
    emit({"rank": "equal to the host's", "max_abs_diff": difference, "candidates": len(served),
          "metrics": "ok", "uid": uid})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--runtime", default=None, help="podman --runtime (runc on this host)")
    parser.add_argument("--default-plan", action="store_true",
                        help="the image's own batch plan (40 shapes) instead of a small one")  # fmt: skip
    args = parser.parse_args()
    volume = f"phoenix-cache-check-{int(time.time())}"
    podman("volume", "create", volume)
    containers = []
    try:
        check_image(args.image)
        cold = Container(args.image, f"{volume}-cold", volume, args.runtime, not args.default_plan)
        containers.append(cold)
        emit({"cold_start_to_serving_s": round(cold.wait_serving(), 1)})
        # Every shape compiled: the check meets a settled server.
        emit({"cold_start_to_all_shapes_s": round(cold.wait_all_shapes(), 1)})
        check_container(cold)
        code, seconds = cold.stop()
        emit({"sigterm_exit_code": code, "sigterm_exit_s": round(seconds, 2)})
        assert code == 0, f"exit code {code} on SIGTERM:\n{cold.logs()}"
        assert seconds <= GRACE_SECONDS + 1, f"SIGTERM took {seconds:.1f}s"
        assert '"msg": "stopped"' in cold.logs(), cold.logs()
        warm = Container(args.image, f"{volume}-warm", volume, args.runtime, not args.default_plan)
        containers.append(warm)
        cached = warm.wait_serving()
        emit({"cached_start_to_serving_s": round(cached, 1),
              "cached_start_to_all_shapes_s": round(warm.wait_all_shapes(), 1)})  # fmt: skip
        assert "compiled batch shape" in warm.logs()
        code, seconds = warm.stop()
        assert code == 0, f"exit code {code} on SIGTERM:\n{warm.logs()}"
    finally:
        for c in containers:
            c.remove()
        podman("volume", "rm", "-f", volume, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
