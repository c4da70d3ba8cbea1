"""xAI's contract (server/contracts/xai.py): every history form decoded into our request, pairing of
sets and sequences, fields outside our subset, refusals naming the field, and the response."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.checkpoint import load_checkpoint
from request.actions import ACTIONS, NUM_ACTIONS
from server.config import Limits
from server.contracts import xai
from server.errors import InvalidArgument
from server.rpc import recsys_pb2 as xpb
from tests.helpers import random_request, sigmoid, varint
from tests.server import xai_forms
from tests.server.xai_forms import FORMS, ONE_ACTION_FORMS


@pytest.fixture(scope="module")
def config(parity_checkpoint):
    return load_checkpoint(parity_checkpoint).config


def raw_for(form: str, seed: int, history: int = 9, candidates: int = 5):
    raw = random_request(np.random.default_rng(seed), history, candidates, f"r{seed}")
    return xai_forms.expressible(raw, one_action=form in ONE_ACTION_FORMS)


def decode(request, config, limits: Limits | None = None):
    return xai.decode_request(request.SerializeToString(), config, limits or Limits())


def assert_same_request(got, want):
    assert got.user_id == want.user_id
    for name in ("history_post_ids", "history_author_ids", "history_actions", "history_surface",
                 "candidate_post_ids", "candidate_author_ids", "candidate_surface"):  # fmt: skip
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.mark.parametrize("form", FORMS)
def test_every_history_form_decodes_to_the_same_request(config, form):
    raw = raw_for(form, 1)
    request_id, (got,), plan = decode(xai_forms.request([raw], form, metadata="req-1"), config)
    assert request_id == "req-1" and plan.user_ids == (raw.user_id,)
    assert_same_request(got, raw)


@pytest.mark.parametrize("name", xai_forms.EXAMPLES)
def test_each_example_holds_the_same_request_in_its_form(config, name):
    request = xai_forms.example(name)
    form = xai_forms.EXAMPLES[name]
    assert (form == "columnar_sequences") == bool(request.columnar_sequences)
    if form != "columnar_sequences":
        kind = request.sequences[0].userActionsData.WhichOneof("data")
        assert (kind or "userActions") == form
    request_id, (got,), plan = decode(request, config)
    assert request_id == name.removesuffix(".json") and plan.mode == "logprob"
    assert_same_request(got, xai_forms.example_raw())


def test_actions_the_model_does_not_predict_are_dropped_and_their_event_kept(config):
    seq = xpb.UserActionSequence(userId=5, userActions=[
        xpb.UserAction(tweetInfo=xpb.TweetInfo(tweetId=11, authorId=3),
                       actionInfo=xpb.ActionInfo(actionName=xai_forms.IMPRESSION)),
        xpb.UserAction(tweetInfo=xpb.TweetInfo(tweetId=0, authorId=3),  # no post: dropped
                       actionInfo=xpb.ActionInfo(actionName=xai_forms.action_value(0))),
        xpb.UserAction(tweetInfo=xpb.TweetInfo(tweetId=12, authorId=4),
                       actionInfo=xpb.ActionInfo(actionName=xai_forms.action_value(17))),
    ])  # fmt: skip
    request = xpb.PredictNextActionsRequest(
        sequences=[seq],
        candidateSets=[
            xpb.CandidateSet(userId=5, candidates=[xpb.TweetInfo(tweetId=9, authorId=1)])
        ],
    )
    (got,) = decode(request, config)[1]
    assert got.history_post_ids.tolist() == [11, 12]
    assert not got.history_actions[0].any()  # an impression: no action
    assert np.flatnonzero(got.history_actions[1]).tolist() == [17]


def test_several_sets_pair_with_their_users_sequences(config):
    raws = [raw_for("orderedAggregatedUserActionsList", s) for s in (2, 3, 4)]
    request = xai_forms.request(raws, "orderedAggregatedUserActionsList")
    sequences = list(request.sequences)
    del request.sequences[:]
    request.sequences.extend(reversed(sequences))  # paired by userId, not by position
    _, got, plan = decode(request, config)
    for g, want in zip(got, raws, strict=True):
        assert_same_request(g, want)
    assert plan.user_ids == tuple(r.user_id for r in raws)


def test_a_sequence_without_a_user_pairs_by_position_and_one_set_takes_the_last(config):
    raws = [raw_for("userActions", s) for s in (5, 6)]
    request = xai_forms.request(raws, "userActions")
    for seq in request.sequences:
        seq.userId = 0
    _, got, _ = decode(request, config)
    assert_same_request(got[1], raws[1])
    one = xai_forms.request([raws[0]], "userActions")
    one.sequences.insert(0, xai_forms.sequence(raws[1], "userActions"))
    one.sequences[0].userId = 0
    assert_same_request(decode(one, config)[1][0], raws[0])  # the last sequence is its user's


def test_fields_outside_our_subset_decode_cleanly_and_come_back_in_the_echo(config):
    """A request encoded by hand with fields our proto does not declare, at every level we
    read: skipped by the parser, kept in the echoed candidate."""

    def field(number: int, wire: int, payload: bytes) -> bytes:
        return varint(number << 3 | wire) + payload

    def message(number: int, body: bytes) -> bytes:
        return field(number, 2, varint(len(body)) + body)

    extra_tweet = (field(21, 0, varint(123)) + message(26, np.float32([1, 2]).tobytes())
                   + message(14, field(1, 0, varint(77)) + field(2, 0, b"\x01")))  # fmt: skip
    tweet = field(1, 0, varint(2**64 - 5)) + field(2, 0, varint(42)) + extra_tweet
    action = message(2, field(1, 0, varint(9)) + message(2, field(1, 0, varint(555)) + field(2, 0, varint(6)))
                     + message(3, field(2, 0, varint(1)) + message(5, field(9, 0, varint(3))
                                                                   + field(3, 1, b"\x00" * 8))))  # fmt: skip
    sequence = field(1, 0, varint(9)) + message(3, field(1, 0, varint(1))) + action
    candidate_set = (field(1, 0, varint(9)) + message(2, tweet) + field(3, 0, varint(1))
                     + message(5, message(4, b"1.2.3.4")) + message(4, np.float32([0.5]).tobytes()))  # fmt: skip
    data = (message(1, sequence) + message(2, candidate_set) + field(3, 0, b"\x01")
            + message(12, field(1, 0, varint(9))) + message(14, field(6, 5, b"\x00" * 4))
            + field(16, 0, varint(1)) + message(17, b"\x01\x02"))  # fmt: skip
    _, (got,), plan = xai.decode_request(data, config, Limits())
    assert got.user_id == 9 and got.candidate_post_ids.tolist() == [2**64 - 5]
    assert got.history_post_ids.tolist() == [555] and got.history_surface.tolist() == [3]
    assert np.flatnonzero(got.history_actions[0]).tolist() == [ACTIONS.index("favorite")]
    assert plan.echoes == ((tweet,),)  # the unknown fields come back as they came


BAD = {
    "no set": (lambda r: r.ClearField("candidateSets"), "candidateSets"),
    "surface": (lambda r: setattr(r.candidateSets[0], "productSurface", 40),
                "candidateSets[0].productSurface"),
    "history surface": (
        lambda r: setattr(r.sequences[0].userActions[1].actionInfo.userActionMeta,
                          "productSurface", 99),
        "sequences[0].userActions[1].actionInfo.userActionMeta.productSurface"),
    "no candidates": (lambda r: r.candidateSets[0].ClearField("candidates"),
                      "candidateSets[0].candidates"),
    "user": (lambda r: setattr(r.sequences[0], "userId", 77), "sequences[0].userId"),
    "both forms": (lambda r: r.sequences[0].userActionsData.orderedUserActionList.SetInParent(),
                   "sequences[0]"),
    "zstd": (lambda r: r.sequences[0].userActionsData.compressedUserActions.CopyFrom(
        xpb.CompressedUserActionSequence(data=b"\x28\xb5\x2f\xfd garbage", compression_type=1)),
        "sequences[0].userActionsData.compressedUserActions.data"),
    "compression type": (lambda r: r.sequences[0].userActionsData.compressedUserActions.SetInParent(),
                         "sequences[0].userActionsData.compressedUserActions.compression_type"),
    "arrow": (lambda r: r.columnar_sequences.append(b"\xff\xff\xff\xff\x10\x00garbage"),
              "columnar_sequences[0]"),
    "too many sets": (lambda r: r.candidateSets.extend([r.candidateSets[0]] * 64), "candidateSets"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_are_refused_naming_the_field(config, case):
    request = xai_forms.request([raw_for("userActions", 8)], "userActions")
    if case in ("zstd", "compression type"):
        request.sequences[0].ClearField("userActions")
    breaks, field = BAD[case]
    breaks(request)
    with pytest.raises(InvalidArgument) as error:
        decode(request, config)
    assert error.value.field == field, str(error.value)


def test_bytes_that_do_not_parse_and_nested_compression_are_refused(config):
    with pytest.raises(InvalidArgument, match="request: not a valid PredictNextActionsRequest"):
        xai.decode_request(b"\x0a\xff", config, Limits())
    raw = raw_for("compressedUserActions", 9)
    import zstandard

    request = xai_forms.request([raw], "compressedUserActions")
    inner = request.sequences[0].SerializeToString()  # itself compressed
    request.sequences[
        0
    ].userActionsData.compressedUserActions.data = zstandard.ZstdCompressor().compress(inner)
    with pytest.raises(InvalidArgument, match="may not hold another"):
        decode(request, config)


def test_arrow_columns_of_the_wrong_type_are_refused(config):
    import io

    import pyarrow as pa
    import pyarrow.ipc

    def stream(table) -> bytes:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    request = xai_forms.request([raw_for("columnar_sequences", 10)], "columnar_sequences")
    for table, field in (
        (pa.table({"authorId": [1]}), "columnar_sequences[0].tweetId"),
        (pa.table({"tweetId": ["x"], "authorId": [1]}), "columnar_sequences[0].tweetId"),
        (pa.table({"tweetId": [1], "authorId": [1], "actionNameMultiHot": [[True]]}),
         "columnar_sequences[0].actionNameMultiHot"),
    ):  # fmt: skip
        request.columnar_sequences[0] = stream(table)
        with pytest.raises(InvalidArgument) as error:
            decode(request, config)
        assert error.value.field == field


def test_limits_bound_every_history_form(config):
    limits = Limits(max_history_events=4, max_candidates_per_request=3)
    for form in FORMS:
        request = xai_forms.request([raw_for(form, 11, history=5, candidates=2)], form)
        with pytest.raises(InvalidArgument, match="max_history_events"):
            decode(request, config, limits)
    request = xai_forms.request(
        [raw_for("userActions", 12, history=1, candidates=4)], "userActions"
    )
    with pytest.raises(InvalidArgument, match="max_candidates_per_request"):
        decode(request, config, limits)


def test_negative_enum_values_in_a_history_are_refused_or_dropped_not_internal(config):
    """ActionName and ProductSurface are int32 enums: a negative value is an action the model
    does not predict (dropped) or a surface outside the vocabulary (refused, named)."""
    raw = raw_for("userActions", 13, history=3)
    for form, field in (("userActions", "sequences[0].userActions[1].actionInfo.userActionMeta"),
                        ("orderedAggregatedUserActionsList", "sequences[0].userActionsData."
                         "orderedAggregatedUserActionsList.aggregatedUserActions[1].actions[0]"
                         ".userActionMeta")):  # fmt: skip
        request = xai_forms.request([raw], form)
        seq = request.sequences[0]
        event = (seq.userActions[1].actionInfo if form == "userActions" else
                 seq.userActionsData.orderedAggregatedUserActionsList.aggregatedUserActions[1]
                 .actions[0])  # fmt: skip
        event.actionName = -5
        _, (got,), _ = decode(request, config)
        assert not got.history_actions[1].any()
        event.userActionMeta.productSurface = -1
        with pytest.raises(InvalidArgument, match=r"-1 is outside the vocabulary") as error:
            decode(request, config)
        assert error.value.field == f"{field}.productSurface"


# -- what decoding may cost ------------------------------------------------------------------


def test_decode_cost_is_the_length_plus_the_budget_when_inflating_plus_each_further_set():
    limits = Limits()
    budget, per_set = limits.max_request_bytes, xai.SET_COST
    for form in FORMS:
        inflating = form in ("compressedUserActions", "columnar_sequences")
        for sets in (1, 3):
            raws = [raw_for(form, 20 + k) for k in range(sets)]
            data = xai_forms.request(raws, form).SerializeToString()
            want = len(data) + (budget if inflating else 0) + (sets - 1) * per_set
            assert xai.decode_cost(data, limits) == want, (form, sets)
    many = xai_forms.request([raw_for("userActions", 30, history=3000)], "userActions")
    data = many.SerializeToString()  # its sequence's scan stops at its first action
    assert xai.decode_cost(data, limits) == len(data)
    empty_entry = xai_forms.request([raw_for("userActions", 31)], "userActions")
    empty_entry.columnar_sequences.append(b"")
    data = empty_entry.SerializeToString()
    assert xai.decode_cost(data, limits) == len(data)


def test_decode_cost_of_bytes_that_do_not_scan_is_the_most_a_request_may_cost():
    limits = Limits()
    most = limits.max_request_bytes + (limits.max_candidate_sets - 1) * xai.SET_COST
    for data in (b"\x0a\xff", b"\x0b" * 10, b"\x08" + b"\xff" * 11, b"\x12\x00" * 5000):
        assert xai.decode_cost(data, limits) == len(data) + most
    over = bytes(limits.max_request_bytes + 1)
    assert xai.decode_cost(over, limits) == len(over)  # refused before it is parsed


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.binary(max_size=3000))
def test_decode_cost_of_any_bytes_is_at_least_their_length_and_quick(data):
    start = time.process_time()
    assert xai.decode_cost(data, Limits()) >= len(data)
    assert time.process_time() - start < 0.05


# -- bad bytes -------------------------------------------------------------------------------

VALID = [xai_forms.request([raw_for(form, 40 + k, history=k % 5, candidates=1 + k % 3)], form)
         .SerializeToString() for k, form in enumerate(FORMS * 2)]  # fmt: skip


@st.composite
def mutated_requests(draw) -> bytes:
    """A valid request of any form with a few bytes changed, inserted, cut or repeated."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["set", "insert", "cut", "repeat"]))
        if op == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 40))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=st.one_of(st.binary(max_size=500), mutated_requests()))
def test_decode_request_answers_any_bytes_or_refuses_naming_a_field(config, data):
    try:
        _, raws, plan = xai.decode_request(data, config, Limits())
    except InvalidArgument as e:
        assert re.match(r"(request|metadata|candidateSets|sequences|columnar_sequences|"
                        r"requested(Continuous)?ActionIndices)\b", e.field)  # fmt: skip
        return
    assert len(raws) == len(plan.echoes) >= 1


# -- the response ---------------------------------------------------------------------------


def scores_for(m: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(m, NUM_ACTIONS)).astype(np.float32) * 6
    return np.concatenate([logits, sigmoid(logits).astype(np.float32)], axis=1)


def test_top_log_probs_are_log_sigmoid_at_each_actions_value():
    plan = xai.ResponsePlan("logprob", np.zeros(0, np.int64), (7,), ((b"\x08\x01", b"\x08\x02"),))
    scores = scores_for(2, 0)
    response = xpb.PredictNextActionsResponse.FromString(
        xai.encode_response(plan, [scores], ["v3"], "pod-a", None)
    )
    assert response.servingPodName == "pod-a" and not response.HasField("servingNodeName")
    (dset,) = response.distributionSets
    assert dset.userId == 7 and dset.checkpointPath == "v3"
    for row, dist in zip(scores, dset.candidateDistributions, strict=True):
        top = np.array(dist.topLogProbs)
        assert len(top) == xai.VECTOR_LENGTH and not dist.logits
        for our, name in enumerate(ACTIONS[:18]):
            value = xpb.ActionName.Value(xai.XAI_ACTION_OF[name])
            assert math.isclose(math.exp(top[value]), sigmoid(row[our]), rel_tol=1e-5)
        others = np.setdiff1d(np.arange(xai.VECTOR_LENGTH), xai.ACTION_VALUES)
        assert np.all(top[others] == -np.inf)
        assert dist.continuousActionsValues[xpb.DWELL_TIME] == pytest.approx(row[NUM_ACTIONS + 18])
    assert [d.candidate.tweetId for d in dset.candidateDistributions] == [1, 2]


def test_logits_and_log_map_modes():
    scores = scores_for(3, 1)
    echo = ((b"", b"\x08\x05", b"\x08\x06"),)
    plain = xpb.PredictNextActionsResponse.FromString(
        xai.encode_response(
            xai.ResponsePlan("logits", np.zeros(0, np.int64), (1,), echo),
            [scores],
            ["v"],
            None,
            None,
        )
    )
    dist = plain.distributionSets[0].candidateDistributions[2]
    fav = xpb.ActionName.Value("SERVER_TWEET_FAV")
    assert dist.logits[fav] == pytest.approx(scores[2, 0]) and not dist.topLogProbs
    requested = np.array([fav, 2], np.int64)  # 2: an action the model has no head for
    mapped = xpb.PredictNextActionsResponse.FromString(
        xai.encode_response(
            xai.ResponsePlan("logmap", requested, (1,), echo), [scores], ["v"], None, None
        )
    )
    dist = mapped.distributionSets[0].candidateDistributions[1]
    assert dict(dist.indexToLogits) == {fav: pytest.approx(scores[1, 0]), 2: -np.inf}
    assert not dist.logits and not dist.topLogProbs


FAV = xpb.ActionName.Value("SERVER_TWEET_FAV")
QUOTED = xpb.ActionName.Value("CLIENT_QUOTED_TWEET_CLICK")  # 38, the vectors' last entry
NEW = xpb.ActionName.Value("CLIENT_TWEET_LIVE_STREAM_REPLY")  # 107: no head, past the vectors


def encode_one(plan, scores) -> xpb.PredictNextActionsResponse:
    """`scores` encoded by `plan`, parsed back by protobuf itself."""
    data = xai.encode_response(plan, [scores], ["v"], None, None)
    return xpb.PredictNextActionsResponse.FromString(data)


def test_logits_list_mode_is_one_logit_per_requested_index_in_order():
    scores = scores_for(3, 2)
    requested = np.array([QUOTED, 2, NEW, FAV, 2**32 - 1, FAV], np.int64)  # repeats kept
    plan = xai.ResponsePlan("logits_list", requested, (1,), ((b"", b"", b"\x08\x06"),),
                            np.array([xpb.DWELL_TIME]))  # fmt: skip
    (dset,) = encode_one(plan, scores).distributionSets
    for row, dist in zip(scores, dset.candidateDistributions, strict=True):
        fav, quoted = row[ACTIONS.index("favorite")], row[ACTIONS.index("quoted_click")]
        np.testing.assert_array_equal(dist.requestedActionLogits,
                                      np.float32([quoted, -np.inf, -np.inf, fav, -np.inf, fav]))  # fmt: skip
        assert dict(dist.indexToContinuousValues) == {
            xpb.DWELL_TIME: pytest.approx(row[NUM_ACTIONS + 18])
        }
        assert not (
            dist.logits or dist.topLogProbs or dist.indexToLogits or dist.continuousActionsValues
        )
    assert dset.candidateDistributions[2].candidate.tweetId == 6


def test_log_map_mode_fills_the_requested_continuous_values_too():
    scores = scores_for(2, 3)
    plan = xai.ResponsePlan("logmap", np.array([FAV, 2], np.int64), (1,), ((b"", b""),),
                            np.array([xpb.DWELL_TIME]))  # fmt: skip
    for row, dist in zip(scores, encode_one(plan, scores).distributionSets[0].candidateDistributions,
                         strict=True):  # fmt: skip
        assert dict(dist.indexToLogits) == {FAV: pytest.approx(row[0]), 2: -np.inf}
        assert dict(dist.indexToContinuousValues) == {
            xpb.DWELL_TIME: pytest.approx(row[NUM_ACTIONS + 18])
        }
        assert not (dist.requestedActionLogits or dist.continuousActionsValues)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(mode=st.sampled_from(["logprob", "logits", "logmap", "logits_list"]),
       m=st.integers(0, 4), sets=st.integers(1, 3),
       requested=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 300), max_size=8),
       continuous=st.booleans(), tweet_id_only=st.booleans())  # fmt: skip
def test_every_mode_is_what_protobuf_parses_and_serializes(mode, m, sets, requested, continuous,
                                                          tweet_id_only):  # fmt: skip
    """Our hand-written bytes against protobuf's own parse, and re-serialized by protobuf
    (fields in number order, map entries in request order), byte for byte."""
    requested = np.array(requested, np.int64)
    if mode == "logmap":  # below V, once each (as decoding leaves them)
        requested = np.array(
            list(dict.fromkeys(requested[requested < xai.VECTOR_LENGTH])), np.int64
        )
    elif mode not in xai.REQUESTED_MODES:
        requested = np.zeros(0, np.int64)
    kept = np.array(
        [xpb.DWELL_TIME] if continuous and mode in xai.REQUESTED_MODES else [], np.int64
    )
    echoes = tuple(tuple(xpb.TweetInfo(tweetId=7 * j + i + 1, authorId=0 if tweet_id_only else 9)
                         .SerializeToString() for i in range(m)) for j in range(sets))  # fmt: skip
    plan = xai.ResponsePlan(mode, requested, tuple(range(sets)), echoes, kept)
    scores = [scores_for(m, s) for s in range(sets)]
    data = xai.encode_response(plan, scores, ["v"] * sets, "p", "")
    response = xpb.PredictNextActionsResponse.FromString(data)
    assert response.SerializeToString() == data
    for score, dset in zip(scores, response.distributionSets, strict=True):
        for row, dist in zip(score, dset.candidateDistributions, strict=True):
            logits = xai.requested_values(row[None, :NUM_ACTIONS], requested)[0]
            got = {"logprob": dist.topLogProbs, "logits": dist.logits,
                   "logmap": [dist.indexToLogits[k] for k in requested],
                   "logits_list": dist.requestedActionLogits}[mode]  # fmt: skip
            if mode in xai.REQUESTED_MODES:
                np.testing.assert_array_equal(np.float32(got), logits)
                assert list(dist.indexToContinuousValues) == kept.tolist()
            else:
                assert len(got) == xai.VECTOR_LENGTH and len(dist.continuousActionsValues) == 2


def test_the_mode_and_the_requested_indices_are_read_as_xais_engine_reads_them(config):
    request = xai_forms.request([raw_for("userActions", 14)], "userActions")
    request.requestedActionIndices.extend([QUOTED, 2, NEW, QUOTED])
    request.requestedContinuousActionIndices.extend([0, xpb.DWELL_TIME, 3, xpb.DWELL_TIME, 9])
    assert decode(request, config)[2].mode == "logprob"
    request.returnLogMap = True
    plan = decode(request, config)[2]
    assert (plan.mode, plan.requested.tolist()) == ("logmap", [QUOTED, 2])
    assert plan.continuous.tolist() == [xpb.DWELL_TIME]  # the only one the model predicts
    request.returnLogitsList = True  # wins over returnLogMap
    plan = decode(request, config)[2]
    assert (plan.mode, plan.requested.tolist()) == ("logits_list", [QUOTED, 2, NEW, QUOTED])
    request.ClearField("returnLogprob")
    request.ClearField("returnLogMap")
    request.ClearField("returnLogitsList")
    assert decode(request, config)[2].mode == "logits"


@pytest.mark.parametrize("field", ["requestedActionIndices", "requestedContinuousActionIndices"])
def test_more_requested_indices_than_a_response_may_hold_are_refused(config, field):
    request = xai_forms.request([raw_for("userActions", 15)], "userActions")
    getattr(request, field).extend([1] * (xai.MAX_REQUESTED + 1))
    decode(request, config)  # not read without a mode that returns them
    request.returnLogitsList = True
    with pytest.raises(InvalidArgument, match="257 exceed") as error:
        decode(request, config)
    assert error.value.field == field


@pytest.mark.parametrize("mode", ["logprob", "logits", "logmap", "logits_list"])
def test_a_distribution_reads_back_as_the_probabilities_of_what_it_carries(mode):
    scores = scores_for(1, 4)
    requested = np.array([FAV, NEW, QUOTED], np.int64)
    if mode == "logmap":
        requested = requested[requested < xai.VECTOR_LENGTH]
    elif mode not in xai.REQUESTED_MODES:
        requested = np.zeros(0, np.int64)
    plan = xai.ResponsePlan(mode, requested, (1,), ((b"",),), np.array([xpb.DWELL_TIME]))
    (dist,) = encode_one(plan, scores).distributionSets[0].candidateDistributions
    got = xai.distribution_probabilities(dist, requested.tolist())
    want = sigmoid(scores[0, :NUM_ACTIONS])
    if mode in xai.REQUESTED_MODES:  # favorite, quoted_click and dwell_time only
        carried = [ACTIONS.index(a) for a in ("favorite", "quoted_click", "dwell_time")]
        assert np.flatnonzero(~np.isnan(got)).tolist() == sorted(carried)
        want[np.setdiff1d(np.arange(NUM_ACTIONS), carried)] = np.nan
    want[ACTIONS.index("dwell_time")] = scores[0, NUM_ACTIONS + 18]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_log_sigmoid_is_exact_far_from_zero():
    x = np.array([-200, -30, 0, 30, 200], np.float32)
    exact = -np.logaddexp(0, -x.astype(np.float64))  # log(sigmoid(x)), no rounding to 1 first
    np.testing.assert_allclose(xai.log_sigmoid(x), exact, rtol=1e-6, atol=1e-30)
