"""The real server on ephemeral ports, the embedded default model, real gRPC and HTTP."""

from __future__ import annotations

import concurrent.futures
import hashlib
import shlex
import subprocess

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from model import load_checkpoint
from model.checkpoint import default_checkpoint_path
from request.actions import ACTIONS
from server.config import Limits
from server.contracts.convert import logits_from_pb, raw_request_to_pb
from server.rpc import ranking_pb2 as pb
from server.scheduling.buckets import make_plan
from tests.conftest import ROOT
from tests.helpers import random_request, with_candidates
from tests.server.harness import phoenix_ranker

pytestmark = pytest.mark.slow
ATOL = 1e-5


def rank(server, raw, timeout=30.0) -> np.ndarray:
    return logits_from_pb(server.client.rank(raw_request_to_pb(raw), timeout=timeout))


def test_health_and_reflection(default_server):
    assert default_server.client.health() == "SERVING"
    assert default_server.client.health("phoenix.ranking.v1.RankingService") == "SERVING"
    db = ProtoReflectionDescriptorDatabase(default_server.client.channel)
    services = set(db.get_services())
    assert {"phoenix.ranking.v1.RankingService", "grpc.health.v1.Health"} <= services
    rank_method = db.FindFileContainingSymbol("phoenix.ranking.v1.RankingService")
    assert rank_method.package == "phoenix.ranking.v1"


def test_model_info_matches_the_checkpoint(default_server):
    path = default_checkpoint_path()
    ckpt = load_checkpoint(path)
    info = default_server.client.model_info()
    assert info.model_version == ckpt.info.model_version
    assert info.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(info.actions) == list(ACTIONS)
    assert info.history_seq_len == ckpt.config.history_seq_len
    assert info.candidate_seq_len == ckpt.config.candidate_seq_len
    assert info.emb_size == ckpt.config.emb_size and info.num_layers == ckpt.config.model.num_layers
    assert info.max_candidates_per_request == 2800
    assert info.rope_positions == "right_anchored"
    assert info.compute_dtype == "float32" and info.backend == "cpu"
    assert info.post_table_rows == ckpt.rows.post


@pytest.mark.parametrize("history, candidates", [(0, 1), (5, 8), (64, 33), (150, 100), (3, 300)])
def test_served_logits_equal_the_offline_forward(
    default_server, default_ranker, history, candidates
):
    raw = random_request(np.random.default_rng(history * 1000 + candidates), history, candidates)
    response = default_server.client.rank(raw_request_to_pb(raw))
    np.testing.assert_allclose(logits_from_pb(response), default_ranker.logits(raw), atol=ATOL)
    assert [s.post_id for s in response.scores] == raw.candidate_post_ids.tolist()
    probabilities = np.array([s.probabilities for s in response.scores])
    np.testing.assert_allclose(
        probabilities, 1 / (1 + np.exp(-logits_from_pb(response))), rtol=1e-5
    )


def test_candidate_isolation_through_the_api(default_server):
    raw = random_request(np.random.default_rng(7), 40, 75)  # 75 = 3 windows of <= 32
    full = rank(default_server, raw)
    alone = np.concatenate([rank(default_server, with_candidates(raw, [i])) for i in (0, 37, 74)])
    np.testing.assert_allclose(alone, full[[0, 37, 74]], atol=ATOL)
    order = np.random.default_rng(8).permutation(75)
    np.testing.assert_allclose(
        rank(default_server, with_candidates(raw, order)), full[order], atol=ATOL
    )
    repeated = [5, 5, 60, 5]
    np.testing.assert_allclose(
        rank(default_server, with_candidates(raw, repeated)), full[repeated], atol=ATOL
    )


def test_64_concurrent_clients_get_correct_batched_results(default_server, default_ranker):
    before = default_server.metrics()
    rng = np.random.default_rng(64)
    requests = [
        random_request(rng, int(rng.integers(0, 80)), int(rng.integers(1, 70)), f"c{i}")
        for i in range(64)
    ]
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(rank, default_server, r) for r in requests]
        results = [f.result() for f in futures]
    expected = default_ranker.logits_many(requests)
    for raw, got, want in zip(requests, results, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=raw.request_id)
    after = default_server.metrics()
    batches = after["phoenix_batch_size_count"] - before["phoenix_batch_size_count"]
    singles = (
        after["phoenix_batch_size_bucket{le=1.0}"] - before["phoenix_batch_size_bucket{le=1.0}"]
    )
    assert batches < 64 and singles < batches, "concurrent requests were never batched together"
    assert after["phoenix_compilations_total"] == before["phoenix_compilations_total"]


def mutate(field: str, value):
    def apply(request: pb.RankRequest) -> None:
        target, _, name = field.rpartition(".")
        obj = eval(f"request.{target}") if target else request  # noqa: S307 - test table only
        if isinstance(value, list):
            getattr(obj, name).extend(value)
        else:
            setattr(obj, name, value)

    return apply


def good_request(history=3, candidates=4) -> pb.RankRequest:
    return raw_request_to_pb(random_request(np.random.default_rng(1), history, candidates))


BAD_INPUTS = [
    ("unknown action value", mutate("history[1].actions", [42]), "history[1].actions"),
    ("unspecified action", mutate("history[0].actions", [0]), "ACTION_UNSPECIFIED"),
    ("candidate surface too large", mutate("candidates[2].product_surface", 16), "candidates[2].product_surface"),
    ("history surface too large", mutate("history[2].product_surface", 999), "history[2].product_surface"),
    ("too many candidates", lambda r: r.candidates.extend([pb.Candidate(post_id=1)] * 2800), "candidates"),
    ("too many history events", lambda r: r.history.extend([pb.HistoryEvent(post_id=1)] * 5000), "history"),
    ("oversize request_id", mutate("request_id", "x" * 500), "request_id"),
    # Over --max-request-bytes and under the transport limit (2x that): refused by us.
    ("oversize message", mutate("request_id", "x" * (Limits().max_request_bytes * 3 // 2)),
     "exceeds the server's limit"),
]  # fmt: skip


@pytest.mark.parametrize("name, corrupt, field", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_invalid_argument_and_harms_nothing(
    default_server, default_ranker, name, corrupt, field
):
    bad = good_request()
    corrupt(bad)
    good = random_request(np.random.default_rng(2), 10, 12)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bad_call = pool.submit(default_server.client.rank, bad)
        good_call = pool.submit(rank, default_server, good)
        with pytest.raises(grpc.RpcError) as error:
            bad_call.result()
        np.testing.assert_allclose(good_call.result(), default_ranker.logits(good), atol=ATOL)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.value.details(), error.value.details()
    assert default_server.client.health() == "SERVING"


def test_empty_candidates_get_an_empty_response(default_server):
    response = default_server.client.rank(good_request(candidates=0))
    assert len(response.scores) == 0 and response.model_version


def test_request_id_is_echoed_or_assigned(default_server):
    request = good_request()
    request.request_id = "abc-123"
    assert default_server.client.rank(request).request_id == "abc-123"
    request.request_id = ""
    assert len(default_server.client.rank(request).request_id) == 32


def test_expired_deadline_is_not_computed(default_server):
    before = default_server.metrics()["phoenix_candidates_scored_total"]
    request = raw_request_to_pb(random_request(np.random.default_rng(3), 60, 2000))
    with pytest.raises(grpc.RpcError) as error:
        default_server.client.rank(request, timeout=1e-4)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A request sent after it is answered in order; the expired one never reached the device.
    rank(default_server, random_request(np.random.default_rng(4), 1, 3))
    assert default_server.metrics()["phoenix_candidates_scored_total"] - before == 3


REQUIRED_METRICS = [
    "phoenix_requests_total",
    "phoenix_request_latency_seconds",
    "phoenix_queue_wait_seconds",
    "phoenix_queue_depth",
    "phoenix_batch_size",
    "phoenix_batch_padding_ratio",
    "phoenix_inference_seconds",
    "phoenix_candidates_scored_total",
    "phoenix_compilations_total",
    "phoenix_model_info",
]


def test_metrics_are_exposed_with_sensible_values(default_server):
    for i in range(3):
        rank(default_server, random_request(np.random.default_rng(100 + i), 10, 20))
    m = default_server.metrics()
    names = {key.split("{")[0] for key in m}
    for required in REQUIRED_METRICS:
        assert any(n == required or n.startswith(required + "_") for n in names), required
    assert m["phoenix_requests_total{code=OK,method=Rank}"] >= 3
    assert m["phoenix_request_latency_seconds_count{method=Rank}"] >= 3
    assert m["phoenix_request_latency_seconds_sum{method=Rank}"] > 0
    assert m["phoenix_queue_wait_seconds_count"] >= 3
    assert m["phoenix_queue_depth"] == 0
    assert m["phoenix_batch_size_count"] >= 1
    padding = m["phoenix_batch_padding_ratio_sum"] / m["phoenix_batch_padding_ratio_count"]
    assert 0.0 <= padding < 1.0
    assert m["phoenix_inference_seconds_count"] >= 1 and m["phoenix_inference_seconds_sum"] > 0
    assert m["phoenix_candidates_scored_total"] >= 60
    # The small plan's chunk calls, rows {1,2,4,8} x history {16,64} x candidates {8,32}
    # (all within the default budget of 16 x 32 candidate slots), and its prefix calls, rows
    # {1,2,4,8} x history {16,64}: 24 shapes, each compiled once.
    assert m["phoenix_compilations_total"] == len(make_plan(64, 8, (8, 32)).shapes()) == 24
    info = [k for k in m if k.startswith("phoenix_model_info{")]
    assert len(info) == 1 and "version=phoenix-default-v1" in info[0] and "backend=cpu" in info[0]


def test_cli_rank_and_health_against_the_server(default_server):
    health = subprocess.run([*phoenix_ranker(), "health", "--target", default_server.target],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert health.returncode == 0 and "SERVING" in health.stdout
    ranked = subprocess.run([*phoenix_ranker(), "rank", "--target", default_server.target, "--candidates", "9"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ranked.returncode == 0, ranked.stderr
    lines = ranked.stdout.splitlines()
    assert "score" in lines[1] and "favorite" in lines[1]
    scores = [float(line.split()[3]) for line in lines[3:]]
    assert len(scores) == 9 and scores == sorted(scores, reverse=True)


def test_health_fails_for_a_server_that_is_not_there():
    health = subprocess.run([*phoenix_ranker(), "health", "--target", "127.0.0.1:1", "--timeout", "1"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert health.returncode == 1 and "UNAVAILABLE" in health.stderr


def test_the_log_stream_reports_warm_up_progress_then_serving(default_server):
    """One stream (stderr), one format (JSON lines with --log-json): n of N per shape; the
    serving event once the shapes that hold any request are compiled (one row of the full
    history and each candidate bucket); the rest compile after it, then `compiled_all`."""
    events = default_server.events()
    compiled = [e for e in events if e.get("event") == "compiled"]
    plan = make_plan(64, 8, (8, 32))
    total = len(plan.shapes())
    assert [e["msg"].split()[3] for e in compiled] == [f"{i}/{total}" for i in range(1, total + 1)]
    essential = len(plan.essential())
    assert [tuple(e["shape"]) for e in compiled[:essential]] == plan.essential()
    serving = [e for e in events if e.get("event") == "serving"]
    assert len(serving) == 1 and serving[0]["port"] == default_server.port
    assert (serving[0]["shapes_ready"], serving[0]["shapes"]) == (essential, total)
    assert events.index(compiled[essential - 1]) < events.index(serving[0])
    assert events.index(serving[0]) < events.index(compiled[essential])  # the rest: after
    done = [e for e in events if e.get("event") == "compiled_all"]
    assert len(done) == 1 and events.index(done[0]) > events.index(compiled[-1])


def test_cli_rank_takes_both_target_forms_and_survives_a_closed_pipe(default_server):
    base = [*phoenix_ranker(), "rank", "--target", f"http://{default_server.target}/"]
    ranked = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120)
    assert ranked.returncode == 0, ranked.stderr
    # `rank --json | head -1`: the reader goes away after one line.
    pipe = subprocess.Popen(f"{shlex.join(base)} --json | head -1", shell=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = pipe.communicate(timeout=120)
    assert out == "{\n" and "Traceback" not in err and "BrokenPipe" not in err, err


def test_cli_rank_sends_the_example_request(default_server):
    ranked = subprocess.run(
        [*phoenix_ranker(), "rank", "--target", default_server.target,
         "--request", str(ROOT / "examples" / "request.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ranked.returncode == 0, ranked.stderr
    assert "3 candidates, 4 history events, request_id example-1" in ranked.stdout
