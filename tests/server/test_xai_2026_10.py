"""A client of xAI's 2026-10 contract against our subset: its message shapes, written here from
the facts of xAI's release (field names, numbers and types of `recsys.proto` as of the
x-algorithm snapshot e62790c), compiled at test time into a pool of their own, so that nothing
of our generated stubs is shared.

It checks that every field and enum value our subset declares is xAI's (same name, number and
type), that `returnLogitsList`, `returnLogMap` and `requestedContinuousActionIndices` return
Rank's logits and dwell_time head, and that the new fields we ignore change no score.
"""

from __future__ import annotations

import types

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from request.actions import ACTIONS
from server.config import Limits
from server.contracts import xai
from server.contracts.convert import (
    logits_from_pb,
    probabilities_from_pb,
    raw_request_to_columnar_pb,
)
from server.rpc import recsys_pb2 as xpb
from tests.helpers import random_request
from tests.server import xai_forms

pytestmark = pytest.mark.slow

# xAI's 2026-10 shapes, for every message our subset declares and every one a 2026-10 request
# may carry; messages whose fields do not matter here are left with few or none.
CONTRACT = """
syntax = "proto3";
package xai.recsys.v1;

message ClientContext {
  int64 user_id = 1;
  int64 guest_id = 2;
  int64 app_id = 3;
  string ip_address = 4;
  string user_agent = 5;
  string country_code = 6;
  string language_code = 7;
  bool is_twoffice = 9;
}
message UserContext {
  int32 user_age_bracket = 1;
  int32 user_gender = 2;
  repeated bool followed_grok_topics = 4;
  float user_longitude = 6;
  int32 user_followers_count = 14;
  bool is_nsfw_user = 18;
  bool is_nsfw_mode = 19;
}
message EngagementCountRow {
  int32 action = 1;
  repeated uint32 counts = 2;
}
message EngagementCounts {
  bool present = 1;
  repeated uint32 window_secs = 2;
  repeated EngagementCountRow rows = 3;
  int64 updated_at_ms = 4;
  int64 window_end_ms = 5;
  repeated int32 collected_actions = 6;
}
message ConversionHistoryContext {
  float hist_user_total_convs = 1;
  float hist_user_unique_advs = 2;
  repeated int32 hist_adv_hashes = 6;
  repeated float per_candidate_features = 7;
}
message AdsCandidateSet {}
message PredictNextActionsRequest {
  repeated UserActionSequence sequences = 1;
  repeated CandidateSet candidateSets = 2;
  bool returnLogprob = 3;
  uint32 topLogprobsNum = 4;
  string metadata = 5;
  optional uint64 load_ticket_id = 6;
  repeated AdsCandidateSet adsCandidateSets = 7;
  string intermediateTensorsPath = 8;
  bool returnLogMap = 9;
  repeated uint32 requestedActionIndices = 10;
  bool returnCandidateTweetIdOnly = 11;
  ClientContext clientContext = 12;
  repeated bytes columnar_sequences = 13;
  UserContext userContext = 14;
  ConversionHistoryContext conversionHistory = 15;
  optional uint64 seedTweetId = 16;
  repeated uint32 requestedContinuousActionIndices = 17;
  repeated ConvAssetIds conv_asset_ids = 18;
  PageDecodeParams pageDecode = 19;
  bool returnBackboneScores = 20;
  map<string, string> experiment_overrides = 21;
  bool returnLogitsList = 22;
  repeated PurchaseValueBaseline purchase_value_baselines = 23;
  EngagementCounts user_ads_engagement_counts = 24;
}
message PurchaseValueBaseline {
  int64 impression_id = 1;
  int64 advertiser_account_id = 2;
  double mean_value_usd_28d = 3;
  double mean_value_usd_28d_vt = 4;
}
message PageDecodeParams {
  uint32 poolN = 1;
  uint32 steps = 2;
  float temperature = 3;
}
message PageDecodeResult {
  repeated uint32 pickedIndices = 1;
  repeated float pickedProbs = 2;
  repeated float pickedScores = 3;
}
message ConvAssetIds {
  repeated int64 impressed_time_ms = 1;
  repeated int64 author_id = 2;
  repeated int64 asset_id = 3;
}
message PredictNextActionsResponse {
  repeated CandidateDistributionSet distributionSets = 1;
  ClientContext clientContext = 2;
  optional string servingPodName = 3;
  optional string servingNodeName = 4;
  optional uint64 checkpointLoadDelaySeconds = 5;
}
message ReloadModelRequest {
  bool do_reload = 1;
  repeated string copy_urls = 2;
  string target_prefix = 3;
}
message ReloadModelResponse {
  bool reload_in_progress = 1;
  double current_checkpoint_timestamp = 2;
  string serving_prefix = 3;
  bool peer_ready = 4;
}
message DeviceFeature {
  string ipAddress = 4;
}
message CandidateSet {
  uint64 userId = 1;
  repeated TweetInfo candidates = 2;
  ProductSurface productSurface = 3;
  repeated float searchQueryEmbedding = 4;
  DeviceFeature deviceFeature = 5;
}
message CandidateDistributionSet {
  uint64 userId = 1;
  repeated NextActionDistribution candidateDistributions = 2;
  string checkpointPath = 3;
  string intermediateTensorsPath = 4;
  PageDecodeResult pageDecodeResult = 5;
}
message AdInfo {}
message SlateContext {
  uint32 k = 1;
  uint32 poolRank = 2;
}
message NextActionDistribution {
  TweetInfo candidate = 1;
  repeated float logits = 2;
  repeated float topLogProbs = 3;
  AdInfo adInfo = 4;
  map<uint32, float> indexToLogits = 5;
  repeated float continuousActionsValues = 6;
  map<uint32, float> indexToContinuousValues = 7;
  RewardOutputs rewardOutputs = 8;
  SlateContext slateContext = 9;
  repeated float backboneTopLogProbs = 10;
  repeated float backboneContinuousValues = 11;
  repeated float requestedActionLogits = 12;
}
message RewardOutputs {
  repeated float values = 1;
  repeated float policyLogits = 2;
}
enum ActionName {
  INVALID_NAME = 0;
  SERVER_TWEET_FAV = 1;
  SERVER_TWEET_UNFAV = 2;
  SERVER_TWEET_REPLY = 4;
  SERVER_TWEET_QUOTE = 5;
  SERVER_TWEET_RETWEET = 6;
  CLIENT_TWEET_RECAP_DWELLED = 11;
  CLIENT_TWEET_VIDEO_QUALITY_VIEW = 13;
  CLIENT_TWEET_PHOTO_EXPAND = 14;
  CLIENT_TWEET_REPORT = 16;
  CLIENT_TWEET_NOT_INTERESTED_IN = 17;
  CLIENT_TWEET_FOLLOW_AUTHOR = 21;
  CLIENT_TWEET_BLOCK_AUTHOR = 23;
  CLIENT_TWEET_MUTE_AUTHOR = 25;
  CLIENT_TWEET_CLICK = 29;
  CLIENT_TWEET_CLICK_PROFILE = 30;
  CLIENT_TWEET_SHARE_VIA_COPY_LINK = 32;
  CLIENT_TWEET_CLICK_SEND_VIA_DIRECT_MESSAGE = 33;
  CLIENT_TWEET_SHARE = 37;
  CLIENT_QUOTED_TWEET_CLICK = 38;
  CLIENT_TWEET_VIDEO_OPEN = 47;
  CLIENT_TWEET_RENDER_IMPRESSION = 71;
  CLIENT_TWEET_NOT_RELEVANT_TO_SEARCH = 106;
  CLIENT_TWEET_LIVE_STREAM_REPLY = 107;
  LLM_JUDGE_RELEVANT_TO_SEARCH = 108;
  LLM_JUDGE_NOT_RELEVANT_TO_SEARCH = 109;
  CLIENT_NOTIFICATION_SETTING_OPT_OUT = 110;
  ADS_UPPER_FUNNEL_CONVERSION_VIEW_THROUGH = 190;
  ADS_PIXEL_FIRE = 191;
  ADS_LONG_DWELL_AND_PIXEL_FIRE = 192;
  P_LONG_DWELL_AND_PIXEL_FIRE = 193;
  ADS_ATTRIBUTED_MACT_MMP_CLICK_INSTALL = 194;
  ADS_ATTRIBUTED_MACT_MMP_VIEW_INSTALL = 195;
  P_OPEN_LINK_P90 = 253;
  ADS_MMP_CLICK = 254;
  PLACE_HOLDER_255 = 255;
}
enum ContinuousActionName {
  HOME_PROFILE_VISIT_SECS = 0;
  DWELL_TIME = 1;
  CLICK_DWELL_TIME = 2;
  HOME_VIDEO_CONTINUATION_SECS = 3;
  BRIDGE_PROBABILITY = 4;
  ADS_WEB_CT_PURCHASE_VALUE = 5;
  WEB_CONV_VALUE_USD = 6;
  WEB_CONV_VALUE_RATIO = 7;
}
enum ProductSurface {
  PRODUCT_SURFACE_UNKNOWN = 0;
  PRODUCT_SURFACE_HOME_TIMELINE_RANKING = 1;
  PRODUCT_SURFACE_HOME_TIMELINE_RANKED_FOLLOWING = 15;
}
enum CompressionType {
  INVALID = 0;
  ZSTD = 1;
}
message UserActionMeta {
  uint64 indexInSequence = 1;
  string page = 2;
  double dwellTime = 3;
  ProductSurface productSurface = 9;
}
message TweetInfo {
  uint64 tweetId = 1;
  uint64 authorId = 2;
  uint64 retweetingTweetId = 3;
  uint64 favCount = 21;
}
message ActionInfo {
  ActionName actionName = 2;
  UserActionMeta userActionMeta = 5;
}
message UserAction {
  uint64 userId = 1;
  TweetInfo tweetInfo = 2;
  ActionInfo actionInfo = 3;
}
message AggregatedUserAction {
  int64 userId = 1;
  TweetInfo tweetInfo = 2;
  repeated ActionInfo actions = 3;
}
message UserActionList {
  repeated UserAction user_actions = 1;
}
message AggregatedUserActionList {
  repeated AggregatedUserAction aggregatedUserActions = 1;
}
message CompressedUserActionSequence {
  bytes data = 1;
  CompressionType compression_type = 2;
}
message UserActionSequenceDataContainer {
  oneof data {
    CompressedUserActionSequence compressedUserActions = 1;
    UserActionList orderedUserActionList = 2;
    AggregatedUserActionList orderedAggregatedUserActionsList = 3;
  }
}
message UserActionSequence {
  uint64 userId = 1;
  repeated UserAction userActions = 2;
  UserActionSequenceDataContainer userActionsData = 4;
}
"""
PREDICT = "/xai.recsys.v1.RecsysPredictor/PredictNextActions"
FAV, NEW = xpb.SERVER_TWEET_FAV, xpb.CLIENT_TWEET_LIVE_STREAM_REPLY
# Requested in every call: modelled actions, one without a head below the vectors' length (2),
# the last modelled one (38), new ones and values past every head, a repeat.
REQUESTED = [FAV, 2, xpb.CLIENT_QUOTED_TWEET_CLICK, NEW, xpb.ADS_MMP_CLICK, 13, FAV, 300]
CONTINUOUS = [0, xpb.DWELL_TIME, 3, 7, 40]


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    """The 2026-10 contract's message classes, by name (a pool of their own)."""
    from grpc_tools import protoc

    folder = tmp_path_factory.mktemp("xai-2026-10")
    (folder / "recsys_2026_10.proto").write_text(CONTRACT)
    out = folder / "descriptors.pb"
    assert protoc.main(["protoc", f"-I{folder}", f"--descriptor_set_out={out}",
                        str(folder / "recsys_2026_10.proto")]) == 0  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    described = pool.Add(file)
    return types.SimpleNamespace(
        file=described,
        **{name: message_factory.GetMessageClass(m) for name, m in described.message_types_by_name.items()},
    )  # fmt: skip


def their_request(theirs, raw, form: str = "orderedAggregatedUserActionsList", **options):
    """The request of xai_forms, as the 2026-10 client's message."""
    out = theirs.PredictNextActionsRequest.FromString(
        xai_forms.request([raw], form).SerializeToString()
    )
    for name, value in options.items():
        setattr(out, name, value)
    return out


def with_ignored_fields(theirs, request):
    """`request` with every 2026-10 field we do not read set."""
    out = theirs.PredictNextActionsRequest()
    out.CopyFrom(request)
    out.returnBackboneScores = True
    out.experiment_overrides.update({"ranker.head_tag": "7", "phoenix.temperature": "0.5"})
    out.pageDecode.poolN, out.pageDecode.steps, out.pageDecode.temperature = 200, 8, 0.7
    out.conv_asset_ids.add(impressed_time_ms=[1_760_000_000_000], author_id=[4], asset_id=[9])
    out.purchase_value_baselines.add(
        impression_id=3, advertiser_account_id=8, mean_value_usd_28d=2.5
    )
    counts = out.user_ads_engagement_counts
    counts.present = True
    counts.window_secs.extend([3600, 86400])
    counts.rows.add(action=xpb.ADS_PIXEL_FIRE, counts=[1, 4])
    out.clientContext.user_id, out.clientContext.country_code = 77, "US"
    out.userContext.is_nsfw_mode = True
    out.userContext.followed_grok_topics.extend([True, False])
    out.conversionHistory.hist_adv_hashes.extend([5, 6])
    out.seedTweetId, out.load_ticket_id, out.intermediateTensorsPath = 11, 12, "gs://x/y"
    out.adsCandidateSets.add()
    out.candidateSets[0].searchQueryEmbedding.extend([0.25, -1.0])
    out.candidateSets[0].deviceFeature.ipAddress = "10.0.0.1"
    return out


def call(server, theirs, request):
    stub = server.client.channel.unary_unary(
        PREDICT, request_serializer=type(request).SerializeToString,
        response_deserializer=theirs.PredictNextActionsResponse.FromString,
    )  # fmt: skip
    return stub(request, timeout=60)


def raw_for(seed: int, history: int = 30, candidates: int = 11):
    raw = random_request(np.random.default_rng(seed), history, candidates, f"x{seed}")
    return xai_forms.expressible(raw, one_action=True)  # expressible in every form


# -- our subset against the contract ---------------------------------------------------------


def described(message) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return proto


def shapes(message) -> dict[int, tuple]:
    """Each field's number -> what it is on the wire and in code: its name, type, label, the
    full name of its message or enum type, and whether it is `optional`."""
    return {f.number: (f.name, f.type, f.label, f.type_name, f.proto3_optional)
            for f in described(message).field}  # fmt: skip


def reserved(message) -> set[int]:
    """The field numbers a message reserves."""
    return {n for r in described(message).reserved_range for n in range(r.start, r.end)}


def test_every_field_and_enum_value_of_our_subset_is_xais(theirs):
    for name, ours in xpb.DESCRIPTOR.message_types_by_name.items():
        their_fields = shapes(theirs.file.message_types_by_name[name])
        for number, shape in shapes(ours).items():
            assert their_fields[number] == shape, f"{name}.{shape[0]}"
    for name, ours in xpb.DESCRIPTOR.enum_types_by_name.items():
        their_values = {v.name: v.number for v in theirs.file.enum_types_by_name[name].values}
        assert {v.name: v.number for v in ours.values}.items() <= their_values.items(), name
    continuous = theirs.file.enum_types_by_name["ContinuousActionName"]
    assert [v.name for v in xpb.ContinuousActionName.DESCRIPTOR.values] == [
        v.name for v in continuous.values
    ]  # the whole 2026-10 numbering: slot 0 is HOME_PROFILE_VISIT_SECS now
    assert xai.DWELL_TIME == continuous.values_by_name["DWELL_TIME"].number == 1


def test_every_field_xai_has_is_declared_or_reserved_in_our_subset(theirs):
    for name in ("PredictNextActionsRequest", "PredictNextActionsResponse",
                 "CandidateDistributionSet", "NextActionDistribution"):  # fmt: skip
        ours = xpb.DESCRIPTOR.message_types_by_name[name]
        declared = {f.number for f in ours.fields}
        for field in theirs.file.message_types_by_name[name].fields:
            assert field.number in declared ^ reserved(ours), f"{name}.{field.name}"


def test_the_fields_we_ignore_decode_to_the_same_requests(theirs, parity_checkpoint):
    from model.checkpoint import load_checkpoint

    config = load_checkpoint(parity_checkpoint).config
    raw = raw_for(1)
    for form in xai_forms.FORMS:
        base = their_request(theirs, raw, form)
        base.returnLogitsList = True
        base.requestedActionIndices[:] = REQUESTED
        base.requestedContinuousActionIndices[:] = CONTINUOUS
        plain = xai.decode_request(base.SerializeToString(), config, Limits())
        full = xai.decode_request(with_ignored_fields(theirs, base).SerializeToString(), config,
                                  Limits())  # fmt: skip
        (a,), (b,) = plain[1], full[1]
        for name in ("history_post_ids", "history_actions", "history_surface",
                     "candidate_post_ids", "candidate_surface"):  # fmt: skip
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert plain[2].requested.tolist() == full[2].requested.tolist() == REQUESTED
        assert plain[2].continuous.tolist() == full[2].continuous.tolist() == [xpb.DWELL_TIME]


# -- served: the 2026-10 client against the real server ------------------------------------


def ranked(server, raw) -> tuple[np.ndarray, np.ndarray]:
    """Rank's logits and probabilities for `raw`: float [m, A] each, our action order."""
    response = server.client.rank(raw_request_to_columnar_pb(raw))
    return logits_from_pb(response), probabilities_from_pb(response)


def expected_logits(logits: np.ndarray, requested: list[int]) -> np.ndarray:
    """Rank's logit of each requested ActionName value, -inf where the model has no head."""
    ours = xai.action_values_to_ours(np.array(requested))
    return np.where(ours >= 0, logits[:, np.maximum(ours, 0)], -np.inf)


def test_requested_action_logits_are_ranks_logits_in_request_order(default_server, theirs):
    raw = raw_for(2)
    logits, probabilities = ranked(default_server, raw)
    request = their_request(theirs, raw, returnLogitsList=True)
    request.returnLogMap = True  # returnLogitsList wins, as in xAI's engine
    request.requestedActionIndices[:] = REQUESTED
    request.requestedContinuousActionIndices[:] = CONTINUOUS
    (dist_set,) = call(default_server, theirs, request).distributionSets
    want = expected_logits(logits, REQUESTED)
    dwell = probabilities[:, ACTIONS.index("dwell_time")]
    for i, dist in enumerate(dist_set.candidateDistributions):
        assert dist.candidate.tweetId == raw.candidate_post_ids[i]
        got = np.array(dist.requestedActionLogits, np.float64)
        np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-5)
        assert np.isneginf(got).tolist() == [v not in xai.ACTION_VALUES for v in REQUESTED]
        assert list(dist.indexToContinuousValues) == [xpb.DWELL_TIME]  # the head we have
        assert dist.indexToContinuousValues[xpb.DWELL_TIME] == pytest.approx(dwell[i], abs=1e-5)
        for empty in ("logits", "topLogProbs", "indexToLogits", "continuousActionsValues",
                      "backboneTopLogProbs", "backboneContinuousValues"):  # fmt: skip
            assert not getattr(dist, empty), empty
        assert not dist.HasField("rewardOutputs") and not dist.HasField("slateContext")
    assert not dist_set.HasField("pageDecodeResult")


def test_the_log_map_holds_ranks_logits_below_the_vectors_length(default_server, theirs):
    raw = raw_for(3)
    logits, probabilities = ranked(default_server, raw)
    request = their_request(theirs, raw, returnLogMap=True)
    request.requestedActionIndices[:] = REQUESTED
    request.requestedContinuousActionIndices[:] = CONTINUOUS
    (dist_set,) = call(default_server, theirs, request).distributionSets
    kept = list(dict.fromkeys(v for v in REQUESTED if v < xai.VECTOR_LENGTH))
    want = expected_logits(logits, kept)
    dwell = probabilities[:, ACTIONS.index("dwell_time")]
    for i, dist in enumerate(dist_set.candidateDistributions):
        assert sorted(dist.indexToLogits) == sorted(kept)  # NEW, ADS_MMP_CLICK, 300: absent
        got = np.array([dist.indexToLogits[k] for k in kept], np.float64)
        np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-5)
        assert dict(dist.indexToContinuousValues) == {
            xpb.DWELL_TIME: pytest.approx(dwell[i], abs=1e-5)
        }
        assert not dist.requestedActionLogits and not dist.continuousActionsValues


@pytest.mark.parametrize("mode", ["returnLogprob", "returnLogitsList"])
def test_the_new_fields_we_ignore_change_no_score(default_server, theirs, mode):
    raw = raw_for(4)
    request = their_request(theirs, raw, "columnar_sequences")
    request.returnLogprob = mode == "returnLogprob"
    request.returnLogitsList = mode == "returnLogitsList"
    request.requestedActionIndices[:] = REQUESTED
    request.requestedContinuousActionIndices[:] = CONTINUOUS
    plain = call(default_server, theirs, request)
    full = call(default_server, theirs, with_ignored_fields(theirs, request))
    assert full.SerializeToString() == plain.SerializeToString()
    for dist in full.distributionSets[0].candidateDistributions:
        assert not dist.backboneTopLogProbs and not dist.backboneContinuousValues
    assert not full.distributionSets[0].HasField("pageDecodeResult")
    if mode == "returnLogprob":  # still Rank's probabilities, at each action's index
        _, probabilities = ranked(default_server, raw)
        top = np.array([d.topLogProbs for d in full.distributionSets[0].candidateDistributions])
        np.testing.assert_allclose(np.exp(top[:, xai.ACTION_VALUES]),
                                   probabilities[:, xai.OUR_INDEX], rtol=2e-5, atol=1e-7)  # fmt: skip


def test_a_refused_request_of_the_new_contract_names_its_field(default_server, theirs):
    request = their_request(theirs, raw_for(5), returnLogitsList=True)
    request.requestedActionIndices[:] = [FAV] * (xai.MAX_REQUESTED + 1)
    with pytest.raises(grpc.RpcError) as error:
        call(default_server, theirs, request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("requestedActionIndices:")
