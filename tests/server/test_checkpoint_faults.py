"""Malformed versions in --checkpoint-dir, against the real server (issue 28): each is refused
once, with one log line and one count in phoenix_reload_failures_total, and the best valid
version serves, at start and while serving.

One server serves the whole module: it starts with every malformed kind above a sound version
1 (versions 2-8: each is tried in turn, as a lone bad version 2 would be), then has each kind
dropped in again while serving, then a valid version."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from model.checkpoint import default_checkpoint_path
from server.rpc import recsys_pb2 as xpb
from server.rpc import recsys_pb2_grpc
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess
from tests.server.test_reload import drop_in, wait_until

pytestmark = pytest.mark.slow

FAILURES = "phoenix_reload_failures_total"
SYSFS = ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/profiling",
         "/sys/devices/system/cpu/online")  # fmt: skip


def edited(edit):
    """A kind of malformed file: the default checkpoint with its header's JSON text edited."""

    def make(path: Path) -> None:
        data = default_checkpoint_path().read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        text = edit(header, header["phoenix_model/proj_mat_1"])
        arrive(path, lambda tmp: tmp.write_bytes(struct.pack("<Q", len(text)) + text
                                                 + data[8 + n :]))  # fmt: skip

    return make


def arrive(path: Path, create) -> None:
    """`create(tmp)` makes the entry under a temporary name, then it is renamed to `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    create(tmp)
    os.replace(tmp, path)


def dtype_as_list(header, entry) -> bytes:
    entry["dtype"] = ["F32"]
    return json.dumps(header).encode()


def offsets_as_strings(header, entry) -> bytes:
    entry["data_offsets"] = [str(n) for n in entry["data_offsets"]]
    return json.dumps(header).encode()


def shape_as_string(header, entry) -> bytes:
    entry["shape"] = str(entry["shape"])
    return json.dumps(header).encode()


def deeply_nested(header, entry) -> bytes:
    entry["shape"] = "NESTED"
    return json.dumps(header).encode().replace(b'"NESTED"', b"[" * 100_000 + b"]" * 100_000)


def sysfs_symlink(path: Path) -> None:
    target = next((name for name in SYSFS if os.access(name, os.R_OK)), None)
    if target is None:
        pytest.skip("no readable sysfs file")
    arrive(path, lambda tmp: tmp.symlink_to(target))


def fifo(path: Path) -> None:
    arrive(path, os.mkfifo)


def truncated(path: Path) -> None:
    data = default_checkpoint_path().read_bytes()
    arrive(path, lambda tmp: tmp.write_bytes(data[: len(data) // 2]))


KINDS = {
    "dtype-as-a-list": edited(dtype_as_list),
    "offsets-as-strings": edited(offsets_as_strings),
    "shape-as-a-string": edited(shape_as_string),
    "deeply-nested-json": edited(deeply_nested),
    "symlink-to-sysfs": sysfs_symlink,
    "fifo": fifo,
    "truncated": truncated,
}
AT_START = dict(zip(range(2, 2 + len(KINDS)), KINDS, strict=True))  # version -> kind
WHILE_SERVING = dict(zip(range(10, 10 + len(KINDS)), KINDS, strict=True))


@pytest.fixture(scope="module")
def server(tmp_path_factory, compilation_cache):
    versions = tmp_path_factory.mktemp("versions")
    shutil.copyfile(default_checkpoint_path(), versions / "1.safetensors")
    for number, kind in AT_START.items():
        KINDS[kind](versions / f"{number}.safetensors")
    with ServerProcess(*SMALL_PLAN, "--checkpoint-dir", str(versions), "--poll-seconds", "0.2",
                       "--admin-rpcs", env=compilation_cache, all_shapes=False) as s:  # fmt: skip
        s.versions = versions
        yield s


def look(server, times: int = 3) -> None:
    """Have the server check its directory `times` times over, each to the end (ReloadModel
    wakes the watcher, then reports it busy until that check is done)."""
    stub = recsys_pb2_grpc.RecsysPredictorStub(server.client.channel)
    for _ in range(times):
        stub.ReloadModel(xpb.ReloadModelRequest(do_reload=True), timeout=10)
        wait_until(lambda: not stub.ReloadModel(xpb.ReloadModelRequest(), timeout=10)
                   .reload_in_progress, 30, "the check to finish")  # fmt: skip


def refusals(server) -> dict[int, int]:
    """version -> how many times the log refused it."""
    counts: dict[int, int] = {}
    for event in server.events():
        if event.get("event") == "reload_refused":
            counts[event["version"]] = counts.get(event["version"], 0) + 1
    return counts


def no_traceback(server) -> None:
    assert "Traceback" not in server.log()


def test_at_start_each_malformed_version_is_refused_once_and_version_1_serves(server):
    assert server.client.model_info().model_version == "1"
    look(server)  # later checks leave them be
    assert server.metrics()[FAILURES] == len(AT_START)
    assert refusals(server) == dict.fromkeys(AT_START, 1)
    no_traceback(server)


def test_while_serving_each_malformed_version_is_refused_once_then_a_valid_one_serves(server):
    failures = server.metrics()[FAILURES]
    for number, kind in WHILE_SERVING.items():
        KINDS[kind](server.versions / f"{number}.safetensors")
        failures += 1
        server.wait_for_metrics(lambda m, f=failures: m[FAILURES] >= f, f"{kind} refused")
        look(server)  # several more checks: not refused again
        assert server.metrics()[FAILURES] == failures, kind
        assert refusals(server)[number] == 1, kind
        assert server.client.model_info().model_version == "1", kind
    drop_in(server.versions, default_checkpoint_path(), 20)
    wait_until(lambda: server.client.model_info().model_version == "20", 60, "version 20")
    assert server.metrics()[FAILURES] == failures
    no_traceback(server)
