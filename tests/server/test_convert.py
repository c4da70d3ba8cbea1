"""Proto <-> domain conversion: validation messages and the byte-level response encoder."""

from __future__ import annotations

import numpy as np
import pytest

from model.checkpoint import load_checkpoint
from server.config import Limits
from server.contracts.convert import (
    decode_rank_request,
    logits_from_pb,
    rank_response_bytes,
    raw_request_to_columnar_pb,
    raw_request_to_pb,
)
from server.errors import InvalidArgument
from server.rpc import ranking_pb2 as pb
from tests.helpers import random_request, sigmoid


@pytest.fixture(scope="module")
def config(parity_checkpoint):
    return load_checkpoint(parity_checkpoint).config


@pytest.mark.parametrize("m", [0, 1, 7, 2800])
def test_response_bytes_parse_to_the_protobuf_message(m):
    rng = np.random.default_rng(m)
    post_ids = rng.integers(0, 2**64 - 1, size=m, dtype=np.uint64, endpoint=True)
    if m:
        post_ids[0] = 0
        post_ids[-1] = 2**64 - 1
    logits = (rng.normal(size=(m, 19)) * 20).astype(np.float32)
    probabilities = sigmoid(logits).astype(np.float32)
    expected = pb.RankResponse(
        model_version="v-1",
        request_id="r\u00e9q",
        scores=[
            pb.CandidateScores(post_id=int(p), logits=lg.tolist(), probabilities=pr.tolist())
            for p, lg, pr in zip(post_ids, logits, probabilities, strict=True)
        ],
    )
    got = pb.RankResponse.FromString(
        rank_response_bytes(post_ids, logits, "v-1", "r\u00e9q", probabilities)
    )
    assert got == expected
    np.testing.assert_array_equal(logits_from_pb(got), logits)


def test_request_round_trip(config):
    raw = random_request(np.random.default_rng(0), 9, 5, "rid")
    back = decode_rank_request(raw_request_to_pb(raw).SerializeToString(), config, Limits())
    assert back.user_id == raw.user_id and back.request_id == "rid"
    for name in ("history_post_ids", "history_actions", "history_surface", "candidate_post_ids",
                 "candidate_author_ids", "candidate_surface"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back, name), getattr(raw, name), err_msg=name)


@pytest.mark.parametrize(
    "actions, field, message",
    [
        ([[1], [2, 0]], "history[1].actions[1]", "ACTION_UNSPECIFIED"),
        ([[], [3, 20]], "history[1].actions[1]", "20 is not a defined Action"),
        ([[99], []], "history[0].actions[0]", "99"),
    ],
)
def test_bad_actions_name_the_event_and_position(config, actions, field, message):
    request = pb.RankRequest(
        history=[pb.HistoryEvent(post_id=1, actions=a) for a in actions],
        candidates=[pb.Candidate(post_id=2)],
    )
    with pytest.raises(InvalidArgument, match=message) as error:
        decode_rank_request(request.SerializeToString(), config, Limits())
    assert error.value.field == field


def test_limits_name_their_field(config):
    request = pb.RankRequest(candidates=[pb.Candidate(post_id=i) for i in range(11)])
    with pytest.raises(InvalidArgument, match="max_candidates_per_request=10") as error:
        decode_rank_request(
            request.SerializeToString(), config, Limits(max_candidates_per_request=10)
        )
    assert error.value.field == "candidates"
    with pytest.raises(InvalidArgument, match="exceeds the server's limit") as error:
        decode_rank_request(request.SerializeToString(), config, Limits(max_request_bytes=50))
    assert error.value.field == "request"


COLUMNS = ("user_id", "history_post_ids", "history_author_ids", "history_actions",
           "history_surface", "candidate_post_ids", "candidate_author_ids", "candidate_surface")  # fmt: skip


@pytest.mark.parametrize(("n", "m"), [(0, 0), (1, 1), (9, 5), (64, 2800)])
def test_the_columnar_form_decodes_to_the_same_request_as_the_row_form(config, n, m):
    raw = random_request(np.random.default_rng(n + m), n, m, "cols")
    rows = decode_rank_request(raw_request_to_pb(raw).SerializeToString(), config, Limits())
    data = raw_request_to_columnar_pb(raw).SerializeToString()
    cols = decode_rank_request(data, config, Limits())
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(cols, name), getattr(rows, name))
        np.testing.assert_array_equal(getattr(cols, name), getattr(raw, name))
    assert cols.request_id == "cols"
    assert cols.history_actions.dtype == np.uint8 and cols.history_actions.shape == (n, 19)


@pytest.mark.parametrize(
    "data",
    [b"\x22\x03\xff\xfe\xfd", b"\xff\xff\xff", b"\x0a\x05ab", b"\x2a\x80\x80\x80\x80\x10"],
    ids=["non-utf8-request-id", "bad-tag", "truncated", "huge-length"],
)
def test_bytes_that_do_not_parse_are_invalid_argument(config, data):
    with pytest.raises(InvalidArgument, match="not a valid RankRequest") as e:
        decode_rank_request(data, config, Limits())
    assert e.value.field == "request"
    assert "Traceback" not in str(e.value) and "<class" not in str(e.value)


def test_columnar_mistakes_name_the_field(config):
    raw = random_request(np.random.default_rng(1), 3, 2)
    good = raw_request_to_columnar_pb(raw)

    def refused(message, field):
        with pytest.raises(InvalidArgument) as e:
            decode_rank_request(message.SerializeToString(), config, Limits())
        assert e.value.field == field, str(e.value)

    both = pb.RankRequest()
    both.CopyFrom(good)
    both.candidates.add(post_id=1, author_id=2)
    refused(both, "candidates")
    short = pb.RankRequest()
    short.CopyFrom(good)
    del short.candidate_columns.author_ids[-1]
    refused(short, "candidate_columns.author_ids")
    high = pb.RankRequest()
    high.CopyFrom(good)
    high.history_columns.action_masks[1] = 1 << 19
    refused(high, "history_columns.action_masks[1]")
    surface = pb.RankRequest()
    surface.CopyFrom(good)
    surface.candidate_columns.product_surfaces[0] = 99
    refused(surface, "candidates[0].product_surface")


def test_action_entries_are_capped_before_they_are_expanded(config):
    """One event with a million actions is refused by its count, not after decoding it."""
    request = pb.RankRequest(user_id=1)
    request.history.add(post_id=1, author_id=1, actions=[1] * 1_000_000)
    data = request.SerializeToString()
    with pytest.raises(InvalidArgument, match="max_history_actions") as e:
        decode_rank_request(data, config, Limits(max_request_bytes=len(data)))
    assert e.value.field == "history.actions"
