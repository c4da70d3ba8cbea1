"""xAI's PredictNextActions served beside Rank, on the real server over real gRPC: the same
scores as Rank for every history form and every example (examples/xai-*.json), several users
per call, clients built from a fuller proto, refusals counted, metadata, compression and
ReloadModel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest

from model.checkpoint import default_checkpoint_path
from request.actions import ACTIONS, NUM_ACTIONS
from server.contracts.convert import (
    logits_from_pb,
    probabilities_from_pb,
    raw_request_to_columnar_pb,
)
from server.contracts.xai import ACTION_VALUES, OUR_INDEX, VECTOR_LENGTH
from server.rpc import recsys_pb2 as xpb
from server.rpc import recsys_pb2_grpc
from tests.conftest import ROOT
from tests.helpers import random_request
from tests.server import xai_forms
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess
from tests.server.xai_forms import FORMS, ONE_ACTION_FORMS

pytestmark = pytest.mark.slow

MODES = {"one-process": (), "frontend-workers": ("--frontend-workers", "2")}
PREDICT = "PredictNextActions"


@pytest.fixture(scope="module", params=MODES)
def server(request, tmp_path_factory, compilation_cache):
    versions = tmp_path_factory.mktemp("xai-versions")
    shutil.copy(default_checkpoint_path(), versions / "1.safetensors")
    env = {**compilation_cache, "POD_NAME": "pod-7", "NODE_NAME": "node-3"}
    with ServerProcess(*SMALL_PLAN, "--checkpoint-dir", str(versions), "--poll-seconds", "600",
                       "--admin-rpcs", *MODES[request.param], env=env) as s:  # fmt: skip
        s.versions = versions
        yield s


def raw_for(form: str, seed: int, history: int = 20, candidates: int = 13):
    raw = random_request(np.random.default_rng(seed), history, candidates, f"x{seed}")
    return xai_forms.expressible(raw, one_action=form in ONE_ACTION_FORMS)


def assert_matches_rank(server, raw, dist_set) -> None:
    """exp(topLogProbs[ActionName]) is Rank's probability for each of the 18 actions, and
    continuousActionsValues[DWELL_TIME] its dwell_time probability, to float32 rounding."""
    ranked = server.client.rank(raw_request_to_columnar_pb(raw))
    probabilities = probabilities_from_pb(ranked)
    assert len(dist_set.candidateDistributions) == raw.num_candidates
    assert dist_set.userId == raw.user_id and dist_set.checkpointPath == ranked.model_version
    for i, dist in enumerate(dist_set.candidateDistributions):
        assert dist.candidate.tweetId == raw.candidate_post_ids[i]
        top = np.array(dist.topLogProbs, np.float64)
        assert top.shape == (VECTOR_LENGTH,)
        np.testing.assert_allclose(np.exp(top[ACTION_VALUES]), probabilities[i, OUR_INDEX],
                                   rtol=2e-5, atol=1e-7)  # fmt: skip
        dwell = dist.continuousActionsValues[xpb.DWELL_TIME]
        assert dwell == pytest.approx(probabilities[i, ACTIONS.index("dwell_time")], rel=1e-6)
    assert logits_from_pb(ranked).shape == (raw.num_candidates, NUM_ACTIONS)


@pytest.mark.parametrize("form", FORMS)
def test_every_history_form_scores_as_rank(server, form):
    raw = raw_for(form, 1)
    response = server.client.predict(xai_forms.request([raw], form, metadata="m-1"))
    assert response.servingPodName == "pod-7" and response.servingNodeName == "node-3"
    (dist_set,) = response.distributionSets
    assert_matches_rank(server, raw, dist_set)


@pytest.mark.parametrize("name", xai_forms.EXAMPLES)
def test_each_example_is_answered_with_ranks_scores(server, name):
    response = server.client.predict(xai_forms.example(name))
    (dist_set,) = response.distributionSets
    raw = xai_forms.example_raw()
    assert_matches_rank(server, raw, dist_set)
    probabilities = probabilities_from_pb(server.client.rank(raw_request_to_columnar_pb(raw)))
    top = np.array([d.topLogProbs for d in dist_set.candidateDistributions])[:, ACTION_VALUES]
    assert np.isfinite(top).all()
    np.testing.assert_allclose(np.exp(top), probabilities[:, OUR_INDEX], rtol=1e-5, atol=1e-5)


def test_several_users_in_one_call_each_score_as_rank(server):
    raws = [raw_for("orderedAggregatedUserActionsList", seed, 10 + seed, 3 + seed)
            for seed in (2, 3, 4)]  # fmt: skip
    request = xai_forms.request(raws, "orderedAggregatedUserActionsList")
    request.sequences[1].CopyFrom(xai_forms.sequence(raws[1], "compressedUserActions"))
    sequences = list(request.sequences)
    del request.sequences[:]
    request.sequences.extend(reversed(sequences))  # paired by user, not position
    response = server.client.predict(request)
    assert len(response.distributionSets) == 3
    for raw, dist_set in zip(raws, response.distributionSets, strict=True):
        assert_matches_rank(server, raw, dist_set)


def test_a_client_of_a_fuller_contract_gets_the_same_answer(server, tmp_path):
    """A proto with more fields on every message we use (as xAI's full file has): its
    client's request, with those fields set, scores the same; its echoed candidates keep
    them."""
    ours = (ROOT / "proto" / "xai" / "recsys" / "v1" / "recsys.proto").read_text()
    extended = ours
    for name in ("PredictNextActionsRequest", "UserActionSequence", "UserActionSequenceDataContainer",
                 "AggregatedUserActionList", "AggregatedUserAction", "UserAction", "ActionInfo",
                 "UserActionMeta", "TweetInfo", "CandidateSet", "PredictNextActionsResponse",
                 "CandidateDistributionSet", "NextActionDistribution"):  # fmt: skip
        extended = extended.replace(f"message {name} {{\n", f"message {name} {{\n"
                                    "  uint64 extraNumber = 900;\n  string extraText = 901;\n"
                                    "  repeated float extraFloats = 902;\n", 1)  # fmt: skip
    assert extended.count("extraNumber") == 13
    (tmp_path / "recsys.proto").write_text(extended)
    raw = raw_for("orderedAggregatedUserActionsList", 5)
    base = xai_forms.request([raw], "orderedAggregatedUserActionsList").SerializeToString()
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from grpc_tools import protoc
        assert protoc.main(["protoc", "-I{tmp_path}", "--python_out={tmp_path}",
                            "--grpc_python_out={tmp_path}", "{tmp_path}/recsys.proto"]) == 0
        import grpc, recsys_pb2 as x, recsys_pb2_grpc as g
        request = x.PredictNextActionsRequest.FromString(bytes.fromhex({base.hex()!r}))
        for m in (request, request.sequences[0], request.candidateSets[0],
                  request.candidateSets[0].candidates[0],
                  request.sequences[0].userActionsData,
                  request.sequences[0].userActionsData.orderedAggregatedUserActionsList,
                  request.sequences[0].userActionsData.orderedAggregatedUserActionsList
                      .aggregatedUserActions[0]):
            m.extraNumber, m.extraText = 123456789, "more"
            m.extraFloats.extend([1.5, -2.0])
        stub = g.RecsysPredictorStub(grpc.insecure_channel({server.target!r}))
        response = stub.PredictNextActions(request, timeout=30)
        first = response.distributionSets[0].candidateDistributions[0]
        print(json.dumps({{"response": response.SerializeToString().hex(),
                          "echo": [first.candidate.extraNumber, first.candidate.extraText,
                                   list(first.candidate.extraFloats)]}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["echo"] == [123456789, "more", [1.5, -2.0]]
    theirs = xpb.PredictNextActionsResponse.FromString(bytes.fromhex(out["response"]))
    mine = server.client.predict(xpb.PredictNextActionsRequest.FromString(base))
    for a, b in zip(theirs.distributionSets[0].candidateDistributions,
                    mine.distributionSets[0].candidateDistributions, strict=True):  # fmt: skip
        assert list(a.topLogProbs) == list(b.topLogProbs)
        assert a.candidate.tweetId == b.candidate.tweetId


BAD = {
    "candidateSets": lambda r: r.ClearField("candidateSets"),
    "candidateSets[0].productSurface": lambda r: setattr(r.candidateSets[0], "productSurface", 40),
    "sequences[0].userId": lambda r: setattr(r.sequences[0], "userId", 77),
    "candidateSets[0].candidates": lambda r: r.candidateSets[0].ClearField("candidates"),
    "columnar_sequences[0]": lambda r: r.columnar_sequences.append(b"\xff\xff\xff\xffnot arrow"),
    "sequences[0].userActionsData.compressedUserActions.data": (
        lambda r: r.sequences[0].ClearField("userActions")
        or r.sequences[0].userActionsData.compressedUserActions.CopyFrom(
            xpb.CompressedUserActionSequence(data=b"not zstd", compression_type=xpb.ZSTD))),
}  # fmt: skip


def test_bad_inputs_are_invalid_argument_naming_the_field_and_counted(server):
    def refused() -> float:
        key = f"phoenix_requests_total{{code=INVALID_ARGUMENT,method={PREDICT}}}"
        return server.metrics().get(key, 0.0)

    before = refused()
    for field, breaks in BAD.items():
        request = xai_forms.request([raw_for("userActions", 6)], "userActions")
        breaks(request)
        with pytest.raises(grpc.RpcError) as error:
            server.client.predict(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.value.details().startswith(field + ":"), error.value.details()
    server.wait_for_metrics(lambda m: refused() - before == len(BAD), "refusals counted")
    good = server.client.predict(xai_forms.request([raw_for("userActions", 7)], "userActions"))
    assert good.distributionSets  # nothing else harmed


def test_metadata_and_gzip(server):
    raw = raw_for("columnar_sequences", 8)
    request = xai_forms.request([raw], "columnar_sequences")
    sent_ms = str(int(time.time() * 1000))
    metadata = (("x-client-name", "home-mixer"), ("x-request-send-time-ms", sent_ms),
                ("x-request-id", "trace-1"))  # fmt: skip
    response = server.client.predict(request, metadata=metadata, compression=grpc.Compression.Gzip)
    assert_matches_rank(server, raw, response.distributionSets[0])
    samples = server.wait_for_metrics(
        lambda m: m.get(f"phoenix_client_requests_total{{client=home-mixer,method={PREDICT}}}"),
        "the client's label",
    )
    assert samples["phoenix_network_delay_seconds_count"] >= 1
    ranked = server.client.stub.Rank(raw_request_to_columnar_pb(raw), metadata=metadata[2:])
    assert ranked.request_id == "trace-1"  # the header names the call


def test_reload_model_checks_the_directory_now(server):
    stub = recsys_pb2_grpc.RecsysPredictorStub(server.client.channel)
    state = stub.ReloadModel(xpb.ReloadModelRequest(), timeout=10)
    assert state.serving_prefix == "1" and state.current_checkpoint_timestamp > 1.6e9
    shutil.copy(default_checkpoint_path(), server.versions / "2.safetensors")
    stub.ReloadModel(xpb.ReloadModelRequest(do_reload=True), timeout=10)  # polls every 600 s
    deadline = time.monotonic() + 60
    while server.client.model_info().model_version != "2":
        assert time.monotonic() < deadline, "version 2 never served"
        time.sleep(0.1)
    assert stub.ReloadModel(xpb.ReloadModelRequest(), timeout=10).serving_prefix == "2"
    with pytest.raises(grpc.RpcError) as error:
        stub.ReloadModel(xpb.ReloadModelRequest(copy_urls=["gs://b/x"]), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_admin_calls_are_off_unless_enabled(default_server):
    stub = recsys_pb2_grpc.RecsysPredictorStub(default_server.client.channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.ReloadModel(xpb.ReloadModelRequest(do_reload=True), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "--admin-rpcs" in error.value.details()
