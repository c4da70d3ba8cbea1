"""Faults against the real server: bad checkpoint bytes are never served, and work nobody
waits for is never computed.

A checkpoint whose bytes are corrupt, that is truncated or rewritten while its tables are
mapped, or whose model scores non-finite values is withdrawn: health NOT_SERVING, calls
refused UNAVAILABLE with the reason (or DATA_LOSS for the batch that showed it), an ERROR
naming the file, the process alive; with --checkpoint-dir the previous version serves again.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from model.checkpoint import default_checkpoint_path, load_checkpoint, save_checkpoint
from server.config import Limits
from server.contracts.convert import logits_from_pb, raw_request_to_columnar_pb
from server.door.transport import transport_limit
from tests.helpers import random_request, varint
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

POLL = ("--poll-seconds", "0.2")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _requests(count: int, candidates: int = 16) -> list:
    rng = np.random.default_rng(21)
    return [raw_request_to_columnar_pb(random_request(rng, 16, candidates)) for _ in range(count)]


def _tensor_range(path: Path, name: str) -> tuple[int, int]:
    """The byte range of tensor `name` in a safetensors file."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    begin, end = header[name]["data_offsets"]
    return 8 + length + begin, 8 + length + end


def _corrupt(path: Path, name: str = "hash_embeddings/post", share: float = 0.25) -> None:
    """0xFF over the first `share` of a tensor's bytes, in place: float32 NaNs."""
    begin, end = _tensor_range(path, name)
    with open(path, "r+b") as f:
        f.seek(begin)
        f.write(b"\xff" * int(share * (end - begin)))


def _write(path: Path, version: str = "sound", overflow: bool = False) -> Path:
    """The default model written afresh (with per-tensor checksums, so its tables are checked
    apart from the rest); `overflow`: post rows of 3e38, a sound file (its checksums hold, its
    parameters are finite) of a model that scores NaN."""
    c = load_checkpoint(default_checkpoint_path())
    params = {
        m: {k: np.array(v) for k, v in leaves.items()} for m, leaves in c.state.params.items()
    }
    if overflow:
        params["hash_embeddings"]["post"][1:] = 3e38
    save_checkpoint(path, params, c.config, version)
    return path


def _call(server: ServerProcess, request, timeout: float = 10.0
          ) -> tuple[grpc.StatusCode, str, np.ndarray | None]:  # fmt: skip
    try:
        response = server.client.stub.Rank(request, timeout=timeout)
        return grpc.StatusCode.OK, "", logits_from_pb(response)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def _until(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)
    return value


def _assert_no_nan_answered(results) -> None:
    for code, _, logits in results:
        if code == grpc.StatusCode.OK:
            assert np.isfinite(logits).all(), "an OK answer with non-finite logits"


def _errors(server: ServerProcess, event: str) -> list[dict]:
    return [e for e in server.events() if e.get("event") == event and e.get("level") == "error"]


def test_host_tables_truncated_while_serving_withdraw_the_version_and_spare_the_process(
    compilation_cache, tmp_path
):
    path = _write(tmp_path / "model.safetensors")
    original = path.read_bytes()
    with ServerProcess(*SMALL_PLAN, *POLL, "--checkpoint", str(path), "--table-placement",
                       "host", env=compilation_cache) as server:  # fmt: skip
        requests = _requests(4)
        before = [_call(server, r) for r in requests]
        assert all(code == grpc.StatusCode.OK for code, _, _ in before)
        os.truncate(path, 4096)  # held by the server's lease until it has stopped reading
        _until(lambda: server.client.health() == "NOT_SERVING", "health NOT_SERVING")
        code, details, _ = _call(server, requests[0])
        assert code == UNAVAILABLE and "withdrawn" in details and str(path) in details, details
        assert server.proc.poll() is None, "the process died"
        assert any(str(path) in e["msg"] for e in _errors(server, "checkpoint_changed"))
        m = server.metrics()
        assert m["phoenix_withdrawals_total{reason=changed}"] == 1
        assert m["phoenix_serving_withdrawn"] == 1
        # The file made whole again (replaced, as a deployment does): checked, then served.
        staged = tmp_path / "staged"
        staged.write_bytes(original)
        os.replace(staged, path)
        _until(lambda: server.client.health() == "SERVING", "serving again")
        after = [_call(server, r) for r in requests]
        for (_, _, want), (code, _, got) in zip(before, after, strict=True):
            assert code == grpc.StatusCode.OK
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert server.metrics()["phoenix_serving_withdrawn"] == 0


@pytest.mark.parametrize("when", ["at_rest", "while_serving"])
def test_corrupt_host_tables_are_never_answered_ok_with_nan(compilation_cache, tmp_path, when):
    # At rest: the tables serve before their background checksum check, which finds them
    # corrupt and withdraws the version; a call touching a corrupt row meanwhile is DATA_LOSS.
    # While serving: the write itself breaks the server's lease, which withdraws the version
    # before a byte changes.
    path = _write(tmp_path / "model.safetensors")
    if when == "at_rest":
        _corrupt(path)
    with ServerProcess(*SMALL_PLAN, *POLL, "--checkpoint", str(path), "--table-placement",
                       "host", env=compilation_cache) as server:  # fmt: skip
        if when == "while_serving":
            _corrupt(path)
        requests = _requests(16, candidates=64)
        results = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while server.client.health() == "SERVING":
                results += pool.map(lambda r: _call(server, r), requests)
            results += pool.map(lambda r: _call(server, r), requests)  # withdrawn by now
        _assert_no_nan_answered(results)
        codes = {code for code, _, _ in results}
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DATA_LOSS, UNAVAILABLE}, codes
        assert results[-1][0] == UNAVAILABLE and "withdrawn" in results[-1][1]
        m = server.metrics()
        reason = "corrupt" if when == "at_rest" else "changed"
        assert m[f"phoenix_withdrawals_total{{reason={reason}}}"] == 1
        if when == "at_rest":
            assert m["phoenix_table_verification"] == -1
        for code, details, _ in results:
            if code == grpc.StatusCode.DATA_LOSS:
                assert "request_id=" in details and "non-finite" in details, details
        assert server.proc.poll() is None
        # The file is not served again as it is (the re-check finds it corrupt).
        time.sleep(1.0)  # five polls of --checkpoint's file: none may serve it
        assert server.client.health() == "NOT_SERVING"


def test_a_corrupt_table_placed_on_the_device_never_serves(compilation_cache, tmp_path):
    path = _write(tmp_path / "model.safetensors")
    _corrupt(path)
    server = None
    with pytest.raises(RuntimeError, match="hash_embeddings/post") as failed:
        server = ServerProcess(*SMALL_PLAN, "--checkpoint", str(path), "--table-placement",
                               "device", env=compilation_cache)  # fmt: skip
    assert server is None and "checksum" in str(failed.value)
    # With --checkpoint-dir the sound version below it serves instead.
    versions = tmp_path / "versions"
    versions.mkdir()
    _write(versions / "1.safetensors")
    shutil.copyfile(path, versions / "2.safetensors")
    with ServerProcess(*SMALL_PLAN, *POLL, "--checkpoint-dir", str(versions),
                       "--table-placement", "device", env=compilation_cache) as server:  # fmt: skip
        assert server.client.model_info().model_version == "1"
        assert server.metrics()["phoenix_reload_failures_total"] == 1


def test_a_model_that_scores_non_finite_values_is_data_loss_then_withdrawn(
    compilation_cache, tmp_path
):
    versions = tmp_path / "versions"
    versions.mkdir()
    _write(versions / "1.safetensors")
    with ServerProcess(*SMALL_PLAN, *POLL, "--checkpoint-dir", str(versions),
                       env=compilation_cache) as server:  # fmt: skip
        requests = _requests(8)
        want = [_call(server, r)[2] for r in requests]
        # Version 2's checksums hold and its parameters are finite: it loads and swaps in,
        # then scores NaN. Each such batch is DATA_LOSS; the third withdraws it, and version
        # 1 serves again.
        _write(versions / ".2.tmp", "overflowing", overflow=True)
        os.replace(versions / ".2.tmp", versions / "2.safetensors")
        _until(lambda: server.metrics().get("phoenix_reloads_total", 0) >= 1, "version 2 in")
        results = []
        for _ in range(20):
            results += [_call(server, r) for r in requests[:1]]
            if server.metrics().get("phoenix_withdrawals_total{reason=non_finite}"):
                break
        _assert_no_nan_answered(results)
        losses = [d for code, d, _ in results if code == grpc.StatusCode.DATA_LOSS]
        assert len(losses) >= 3 and all("model version 2" in d for d in losses), results
        assert all("request_id=" in d for d in losses)
        _until(lambda: server.client.model_info().model_version == "1", "version 1 again")
        got = [_call(server, r) for r in requests]
        for w, (code, _, g) in zip(want, got, strict=True):
            assert code == grpc.StatusCode.OK
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
        m = server.metrics()
        assert m["phoenix_non_finite_batches_total"] >= 3
        assert m["phoenix_serving_withdrawn"] == 0
        assert any("answered DATA_LOSS" in e.get("msg", "") for e in server.events())


def test_work_whose_calls_have_all_ended_never_starts_on_the_device(compilation_cache):
    # One-row batches of 8 candidates: a 2,000-candidate request is 250 chunk calls, far more
    # than 200 ms of device time; 16 of them with 200 ms deadlines all end DEADLINE_EXCEEDED,
    # and once they have, no device call starts (at most the one running finishes late).
    with ServerProcess("--max-batch-size", "1", "--candidate-buckets", "8",
                       env=compilation_cache) as server:  # fmt: skip
        heavy = raw_request_to_columnar_pb(random_request(np.random.default_rng(4), 64, 2000))
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: _call(server, heavy, 0.2)[0], range(16)))
        ended = server.metrics()["phoenix_device_calls_total"]
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        m = server.wait_for_metrics(
            lambda m: m["phoenix_queue_depth"] == 0 and m["phoenix_requests_in_flight"] == 0,
            "the queue to empty",
        )
        late = m["phoenix_device_calls_total"] - ended
        assert late <= 1, f"{late} device calls after every call had ended"
        key = "phoenix_requests_total{code=DEADLINE_EXCEEDED,method=Rank}"
        counted = {k: v for k, v in m.items() if k.startswith("phoenix_requests_total{")}
        assert m[key] == codes.count(grpc.StatusCode.DEADLINE_EXCEEDED), counted


def test_codes_are_counted_as_the_client_saw_them(default_server):
    server = default_server
    before = server.metrics()
    channel = server.client.channel
    seen = []
    # Over the transport's message limit: gRPC itself answers RESOURCE_EXHAUSTED.
    size = transport_limit(Limits().max_request_bytes) + 1
    huge = b"\x0a" + varint(size) + b"\0" * size  # field 1, one byte past gRPC's limit
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/phoenix.ranking.v1.RankingService/Rank")(huge, timeout=10)
    seen.append(e.value.code())
    # Past its deadline while its body is awaited (never sent): DEADLINE_EXCEEDED.
    stalled = channel.stream_unary("/phoenix.ranking.v1.RankingService/Rank")
    with pytest.raises(grpc.RpcError) as e:
        stalled(iter(lambda: time.sleep(5), None), timeout=0.3)
    seen.append(e.value.code())
    assert seen == [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED]
    key = "phoenix_requests_total{{code={},method=Rank}}"
    m = server.wait_for_metrics(
        lambda m: all(m.get(key.format(c.name), 0) > before.get(key.format(c.name), 0)
                      for c in seen), "both counted",
    )  # fmt: skip
    for code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert m[key.format(code.name)] - before.get(key.format(code.name), 0) == 1
    assert m.get(key.format("CANCELLED"), 0) == before.get(key.format("CANCELLED"), 0)
