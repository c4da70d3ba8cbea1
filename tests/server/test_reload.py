"""Model reload from --checkpoint-dir: the version policy, version pinning in the batcher,
and the real server swapping versions under continuous load, in both serving modes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import safetensors.numpy
from prometheus_client import CollectorRegistry

import server.engine.reload
from model import Ranker
from model.checkpoint import (
    content_sha256,
    default_checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from model.params import flatten, unflatten
from server.contracts.convert import logits_from_pb, raw_request_to_pb
from server.engine.reload import VersionWatcher, load_best
from server.operations.checkpoint_dir import candidates, scan
from server.operations.metrics import Metrics
from tests.helpers import random_request
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess, phoenix_ranker
from tests.server.test_batcher import FakeRunner, make, request, wait_started

# -- the version policy ----------------------------------------------------------------------


def test_only_integer_safetensors_names_are_versions(tmp_path):
    for name in ("1.safetensors", "12.safetensors", ".3.safetensors.tmp", "4.safetensors.part",
                 "latest.safetensors", "05.safetensors", "7.npz"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "9.safetensors").mkdir()  # listed: the loader refuses it, once
    assert [v.number for v in scan(tmp_path)] == [12, 9, 1]


def test_refused_versions_are_skipped_until_their_file_changes(tmp_path):
    (tmp_path / "1.safetensors").write_bytes(b"one")
    (tmp_path / "2.safetensors").write_bytes(b"two")
    first = scan(tmp_path)
    refused = {first[0]}
    assert [v.number for v in candidates(first, refused)] == [1]
    (tmp_path / "2.safetensors").write_bytes(b"two, fixed")  # another size: tried again
    assert [v.number for v in candidates(scan(tmp_path), refused)] == [2, 1]
    (tmp_path / "2.safetensors").unlink()  # rollback: the next one down is first
    assert [v.number for v in candidates(scan(tmp_path), refused)] == [1]


def odd_entries(directory: Path) -> None:
    """Versions 2-7 named like versions but not checkpoints: a FIFO, a socket, a directory, a
    dangling symlink, a symlink loop, a file whose header's dtype is a list."""
    os.mkfifo(directory / "2.safetensors")
    directory.joinpath("3.safetensors").mkdir()
    directory.joinpath("4.safetensors").symlink_to(directory / "absent")
    directory.joinpath("5.safetensors").symlink_to(directory / "5.safetensors")
    data = default_checkpoint_path().read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["phoenix_model/proj_mat_1"]["dtype"] = ["F32"]
    text = json.dumps(header).encode()
    directory.joinpath("7.safetensors").write_bytes(len(text).to_bytes(8, "little") + text
                                                    + data[8 + n :])  # fmt: skip


def failures(metrics) -> float:
    return metrics.reload_failures._value.get()


def refusals(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("version ")
            and " refused: " in r.getMessage()]  # fmt: skip


def test_whatever_has_a_version_name_is_refused_once_and_the_best_valid_one_loads(tmp_path,
                                                                                    caplog):  # fmt: skip
    shutil.copyfile(default_checkpoint_path(), tmp_path / "1.safetensors")
    odd_entries(tmp_path)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "6.safetensors"))
        assert [v.number for v in scan(tmp_path)] == [7, 6, 5, 4, 3, 2, 1]  # nothing opened
        refused, metrics = set(), Metrics(CollectorRegistry())
        for _ in range(3):  # at start, and at each later look: each refused once
            version, checkpoint = load_best(tmp_path, refused, metrics)
            assert version.number == 1 and checkpoint.info.file_sha256
    assert failures(metrics) == 6
    lines = refusals(caplog)
    assert sorted(r.fields["version"] for r in lines) == [2, 3, 4, 5, 6, 7]
    assert not any(r.exc_info for r in lines)  # reasons, not tracebacks
    text = "\n".join(r.getMessage() for r in lines)
    for reason in ("is a FIFO", "is a directory", "no such file", "is a socket",
                   "dtype ['F32'] is not a string", "Too many levels of symbolic links"):  # fmt: skip
        assert reason in text


class ServingOne:
    """`server.engine.versions.Versions` serving version 1, for a watcher that never gets as far as
    preparing another (nothing loads)."""

    resident = 1

    def __init__(self):
        self.serving = Version("1")


def test_a_loader_bug_refuses_its_version_with_a_traceback_and_a_lower_one_serves(
    tmp_path, monkeypatch, caplog
):
    for number in (1, 2):
        shutil.copyfile(default_checkpoint_path(), tmp_path / f"{number}.safetensors")
    real = server.engine.reload.load_checkpoint

    def buggy(path, verify_tables=True):
        if Path(path).name != "1.safetensors":
            raise TypeError("a bug in the loader")
        return real(path, verify_tables)

    monkeypatch.setattr(server.engine.reload, "load_checkpoint", buggy)
    refused, metrics = set(), Metrics(CollectorRegistry())
    serving, _ = load_best(tmp_path, refused, metrics)  # at start
    assert serving.number == 1 and failures(metrics) == 1
    shutil.copyfile(default_checkpoint_path(), tmp_path / "3.safetensors")
    watcher = VersionWatcher(tmp_path, 1.0, ServingOne(), serving, refused, metrics,
                             on_swap=lambda model: None)  # fmt: skip

    async def look_twice():
        return [await watcher.check(), await watcher.check()]

    assert asyncio.run(look_twice()) == [False, False]  # while serving: refused once
    assert failures(metrics) == 2 and watcher.serving.number == 1
    lines = refusals(caplog)
    assert [r.fields["version"] for r in lines] == [2, 3]
    assert all(r.exc_info and "TypeError: a bug in the loader" in r.getMessage() for r in lines)


# -- a request stays on one version ----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Version:
    version: str
    withdrawn: str | None = None


class VersionedRunner(FakeRunner):
    """FakeRunner that records which version scored each batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = Version("1")
        self.scored_by: list[tuple[str, list[int]]] = []

    def run(self, packed, wanted=None):
        out = super().run(packed, wanted)
        self.scored_by.append((packed.model.version, self.batches[-1]))
        return out


def test_a_request_split_across_batches_is_scored_by_one_version():
    from server.scheduling.buckets import BucketPlan

    async def main():
        # One row per batch, windows of 4: a 12-candidate request runs as 3 batches.
        runner = VersionedRunner(BucketPlan((1,), (4,), (4,), 4), gated=True)
        batcher = make(runner, pipeline_depth=1)
        split = batcher.submit(request(1, 12))
        await wait_started(runner)  # its first window is on the device, with version 1
        runner.model = Version("2")  # the swap, between two batches
        later = batcher.submit(request(2, 4))
        runner.gate.set()
        first, second = await split, await later
        assert (first.model_version, second.model_version) == ("1", "2")
        # Every batch of the split request on version 1, the later one's on version 2; the
        # later request runs between the split one's batches (server.scheduling.batcher, step 3).
        assert runner.scored_by == [("1", [1]), ("1", [1]), ("2", [2]), ("1", [1])]
        await batcher.stop()

    asyncio.run(main())


# -- the real server ---------------------------------------------------------------------------


def perturbed(path: Path, seed: int) -> Path:
    """A new version of the default model: same config, other weights."""
    checkpoint = load_checkpoint(default_checkpoint_path())
    rng = np.random.default_rng(seed)
    flat = {k: np.asarray(v) + rng.normal(0, 0.05, v.shape).astype(np.float32)
            for k, v in flatten(checkpoint.state.params).items()}  # fmt: skip
    save_checkpoint(path, unflatten(flat), checkpoint.config, f"perturbed-{seed}")
    return path


def drop_in(directory: Path, source: Path, number: int) -> None:
    """Copy under a temporary name, then rename: how a version should arrive."""
    tmp = directory / f".{number}.safetensors.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, directory / f"{number}.safetensors")


def truncated(source: Path, out: Path) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def bad_checksum(source: Path, out: Path) -> Path:
    data = bytearray(source.read_bytes())
    data[-5] ^= 0xFF  # one bit pattern inside the last tensor
    out.write_bytes(bytes(data))
    return out


def wrong_shapes(source: Path, out: Path) -> Path:
    """A well-formed file whose checksum is right but one tensor has the wrong shape."""
    checkpoint = load_checkpoint(source)
    flat = {k: np.ascontiguousarray(v) for k, v in flatten(checkpoint.state.params).items()}
    name = sorted(flat)[-1]
    flat[name] = np.ascontiguousarray(flat[name].reshape(-1)[:-1])
    with open(source, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(header_len))["__metadata__"]
    metadata["content_sha256"] = content_sha256(flat)
    safetensors.numpy.save_file(flat, str(out), metadata=metadata)
    return out


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` (a real condition on the server) until true, or fail naming it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Load:
    """Clients sending Rank continuously (each in its own thread, one call at a time), each
    recording (model_version, logits) or the error of every call."""

    def __init__(self, target: str, requests, clients: int = 3):
        self.target, self.requests = target, requests
        self.stop = threading.Event()
        self.results: list[list[tuple[int, str, np.ndarray]]] = [[] for _ in range(clients)]
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, i: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            rank = channel.unary_unary(
                "/phoenix.ranking.v1.RankingService/Rank",
                response_deserializer=__import__(
                    "server.rpc.ranking_pb2", fromlist=["x"]
                ).RankResponse.FromString,
            )
            n = 0
            while not self.stop.is_set():
                k = (i + n) % len(self.requests)
                n += 1
                try:
                    response = rank(self.requests[k].SerializeToString(), timeout=30)
                except grpc.RpcError as e:
                    self.errors.append(f"{e.code().name}: {e.details()}")
                    continue
                self.results[i].append((k, response.model_version, logits_from_pb(response)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def versions_seen(self) -> set[str]:
        return {v for calls in self.results for _, v, _ in calls}


@pytest.mark.slow
@pytest.mark.parametrize(("frontends", "tables"), [("0", "device"), ("2", "device"), ("0", "host")],
                         ids=["one-process", "frontend-workers", "host-tables"])  # fmt: skip
def test_versions_swap_under_load_with_no_failed_call(frontends, tables, tmp_path,
                                                      parity_checkpoint, compilation_cache):  # fmt: skip
    versions_dir = tmp_path / "versions"
    versions_dir.mkdir()
    drop_in(versions_dir, default_checkpoint_path(), 1)
    v2 = perturbed(tmp_path / "v2.safetensors", seed=2)
    rankers = {
        "1": Ranker.from_checkpoint(default_checkpoint_path()),
        "2": Ranker.from_checkpoint(v2),
    }
    rng = np.random.default_rng(12)
    raws = [random_request(rng, int(rng.integers(0, 64)), m) for m in (3, 40, 70)]  # 70: 3 windows
    expected = {v: [r.logits(raw) for raw in raws] for v, r in rankers.items()}
    requests = [raw_request_to_pb(raw) for raw in raws]
    with ServerProcess(*SMALL_PLAN, "--checkpoint-dir", str(versions_dir), "--poll-seconds", "0.5",
                       "--frontend-workers", frontends, "--table-placement", tables,
                       env=compilation_cache) as server:  # fmt: skip
        assert server.client.model_info().table_placement == tables
        compilations = server.metrics()["phoenix_compilations_total"]
        with Load(server.target, requests) as load:
            wait_until(lambda: sum(map(len, load.results)) >= 30, 60, "load to start")
            drop_in(versions_dir, v2, 2)
            wait_until(lambda: "2" in load.versions_seen(), 60, "responses from version 2")
            assert server.client.model_info().model_version == "2"
            # Broken versions 3: each refused, version 2 keeps serving.
            failures = server.metrics()["phoenix_reload_failures_total"]
            for make_broken in (truncated, bad_checksum, wrong_shapes):
                broken = make_broken(v2, tmp_path / f"{make_broken.__name__}.safetensors")
                drop_in(versions_dir, broken, 3)
                server.proc.send_signal(signal.SIGHUP)
                failures += 1
                wait_until(lambda f=failures: server.metrics()["phoenix_reload_failures_total"] >= f,
                           60, f"{make_broken.__name__} to be refused")  # fmt: skip
            drop_in(versions_dir, parity_checkpoint, 3)  # a valid file of another architecture
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: server.metrics()["phoenix_reload_failures_total"] >= failures + 1,
                       60, "the incompatible version to be refused")  # fmt: skip
            served_before = sum(map(len, load.results))
            wait_until(lambda: sum(map(len, load.results)) >= served_before + 10, 60, "more calls")
        assert not load.errors, load.errors[:5]
        for calls in load.results:
            seen = [v for _, v, _ in calls]
            assert set(seen) <= {"1", "2"}
            switch = seen.index("2")  # each client sees 1, then only 2
            assert set(seen[:switch]) <= {"1"} and set(seen[switch:]) == {"2"}
            for k, version, logits in calls:  # all of a response from the version it names
                np.testing.assert_allclose(logits, expected[version][k], rtol=1e-5, atol=1e-5)
        metrics = server.metrics()
        assert metrics["phoenix_compilations_total"] == compilations  # executables reused
        assert metrics["phoenix_reloads_total"] == 1
        info = [k for k in metrics if k.startswith("phoenix_model_info{")]
        sha = load_checkpoint(v2).info.file_sha256
        assert len(info) == 1 and "version=2}" in info[0] and sha in info[0]  # one, the new one
        wait_until(lambda: server.metrics()["phoenix_models_resident"] == 1, 30,
                   "the old version to be freed")  # fmt: skip
        # Rollback: remove the newest valid version (and the broken one).
        (versions_dir / "3.safetensors").unlink()
        (versions_dir / "2.safetensors").unlink()
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: server.client.model_info().model_version == "1", 60, "the rollback")
        response = server.client.rank(requests[1])
        assert response.model_version == "1"
        np.testing.assert_allclose(logits_from_pb(response), expected["1"][1], rtol=1e-5, atol=1e-5)
        refused = [e for e in server.events() if e.get("event") == "reload_refused"]
        assert len(refused) == 4 and all(e["level"] == "error" for e in refused)
        assert not any("Traceback" in line for line in server.log().splitlines())


def test_a_directory_without_a_loadable_version_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "1.safetensors").write_bytes(b"not a checkpoint")
    run = subprocess.run([*phoenix_ranker(), "serve", "--checkpoint-dir", str(tmp_path),
                          "--port", "0", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "no loadable <N>.safetensors version" in run.stderr
    assert "Traceback" not in run.stderr


def test_prepare_refuses_non_finite_and_incompatible_versions(tmp_path, parity_checkpoint):
    from server.engine.runner import ModelRunner
    from server.engine.versions import IncompatibleVersionError
    from tests.helpers import runner_config

    serving = load_checkpoint(default_checkpoint_path())
    compiled = []
    runner = ModelRunner(
        serving, runner_config(1, (8,), (64,)), on_compile=lambda s, t: compiled.append(s)
    )
    versions = runner.versions
    runner.warmup()
    flat = {k: np.array(v) for k, v in flatten(serving.state.params).items()}
    name = sorted(flat)[0]
    flat[name].reshape(-1)[0] = np.nan
    nan_path = tmp_path / "nan.safetensors"
    save_checkpoint(nan_path, unflatten(flat), serving.config, "nan")
    with pytest.raises(ValueError, match=f"{name} has non-finite values"):
        versions.prepare(load_checkpoint(nan_path), "2")
    with pytest.raises(IncompatibleVersionError, match="a config change needs a restart"):
        versions.prepare(load_checkpoint(parity_checkpoint), "3")
    assert versions.resident == 1  # neither was kept
    good = versions.prepare(load_checkpoint(perturbed(tmp_path / "v4.safetensors", 4)), "4")
    assert versions.resident == 2 and versions.swap(good).version == serving.info.model_version
    assert len(compiled) == 2  # warm-up's two shapes (a prefix, a chunk); preparing compiled none
