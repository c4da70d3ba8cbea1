"""xAI's home-mixer's largest call is taken by the default limits, in every history form:
2,800 candidates with the TweetInfo fields it sets, 1,022 history events whose posts carry
them too and whose engagements carry their UserActionMeta, against a real server with no
limit flags."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from request.raw import RawRequest
from request.synthetic import synthetic_request_dict
from server.config import Limits
from server.rpc import recsys_pb2 as xpb
from tests.server import xai_forms
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

FORMS = ("userActions", "orderedUserActionList", "orderedAggregatedUserActionsList",
         "compressedUserActions", "columnar_sequences")  # fmt: skip
HISTORY, CANDIDATES = 1022, 2800  # what home-mixer sends at most


def _dress(sequence: xpb.UserActionSequence) -> None:
    """Every engagement of `sequence` as home-mixer fills it (post fields, action meta)."""
    container = sequence.userActionsData
    actions = [*sequence.userActions, *container.orderedUserActionList.user_actions]
    for i, a in enumerate(actions):
        a.tweetInfo.MergeFromString(xai_forms.tweet_fields(i))
        a.actionInfo.userActionMeta.MergeFromString(xai_forms.action_meta_fields(i))
    for i, e in enumerate(container.orderedAggregatedUserActionsList.aggregatedUserActions):
        e.tweetInfo.MergeFromString(xai_forms.tweet_fields(i))
        for a in e.actions:
            a.userActionMeta.MergeFromString(xai_forms.action_meta_fields(i))


def largest_call(form: str) -> bytes:
    raw = xai_forms.expressible(
        RawRequest.from_dict(synthetic_request_dict(5, HISTORY, CANDIDATES, 16)),
        one_action=form in ("userActions", "orderedUserActionList"),
    )
    if form == "compressedUserActions":  # the dressed history, compressed
        inner = xai_forms.sequence(raw, "orderedAggregatedUserActionsList")
        _dress(inner)
        request = xai_forms.request([raw], "orderedAggregatedUserActionsList")
        container = request.sequences[0].userActionsData
        container.compressedUserActions.CopyFrom(xpb.CompressedUserActionSequence(
            data=zstandard.ZstdCompressor().compress(inner.SerializeToString()),
            compression_type=xpb.ZSTD,
        ))  # fmt: skip
    else:
        request = xai_forms.request([raw], form)
        for sequence in request.sequences:
            _dress(sequence)
    for i, candidate in enumerate(request.candidateSets[0].candidates):
        candidate.MergeFromString(xai_forms.tweet_fields(i))
    return request.SerializeToString()


def test_home_mixers_largest_call_fits_the_default_limits_in_every_form(compilation_cache):
    calls = {form: largest_call(form) for form in FORMS}
    sizes = {form: len(data) for form, data in calls.items()}
    print({"bytes": sizes, "limit": Limits().max_request_bytes})
    assert max(sizes.values()) <= Limits().max_request_bytes // 3, sizes  # with room to grow
    with ServerProcess("--max-batch-size", "8", "--candidate-buckets", "256",
                       env=compilation_cache) as server:  # fmt: skip
        channel = server.client.channel
        predict = channel.unary_unary("/xai.recsys.v1.RecsysPredictor/PredictNextActions")
        for form, data in calls.items():
            response = xpb.PredictNextActionsResponse.FromString(predict(data, timeout=120))
            (answer,) = response.distributionSets
            assert len(answer.candidateDistributions) == CANDIDATES, form
            probs = np.array([d.topLogProbs for d in answer.candidateDistributions])
            assert np.isfinite(probs[:, xai_forms.action_value(0)]).all(), form
