"""Building xAI PredictNextActions requests from our RawRequests, in each history form the
contract defines (for the tests of server/contracts/xai.py and the served parity tests), and reading the
examples for xAI's caller (examples/xai-*.json)."""

from __future__ import annotations

import io
import json

import numpy as np
from google.protobuf import json_format

from request.actions import ACTIONS
from request.features import Part
from request.raw import RawRequest
from server.contracts.xai import XAI_ACTION_OF
from server.rpc import recsys_pb2 as xpb
from tests.conftest import ROOT

# Each history form of the contract; the first two carry one action per event.
FORMS = ("userActions", "orderedUserActionList", "orderedAggregatedUserActionsList",
         "compressedUserActions", "columnar_sequences")  # fmt: skip
ONE_ACTION_FORMS = FORMS[:2]
IMPRESSION = 71  # an ActionName the model does not predict (CLIENT_TWEET_RENDER_IMPRESSION)
WIDTH = 64  # actionNameMultiHot's list size, as xAI's engine sizes its action vocabulary
# The examples for xAI's caller, each file the same request (user, history, candidates) with its
# history in one form.
EXAMPLES = {"xai-aggregated.json": "orderedAggregatedUserActionsList",
            "xai-user-actions.json": "userActions", "xai-columnar.json": "columnar_sequences",
            "xai-zstd.json": "compressedUserActions"}  # fmt: skip


def action_value(index: int) -> int:
    return xpb.ActionName.Value(XAI_ACTION_OF[ACTIONS[index]])


def expressible(raw: RawRequest, one_action: bool) -> RawRequest:
    """The same request made expressible in xAI's forms: one candidate surface (a set has
    one), no dwell_time history action (it has no ActionName), and with `one_action` at most
    one action per event (a UserAction carries one)."""
    actions = raw.history_actions.copy()
    actions[:, ACTIONS.index("dwell_time")] = 0
    if one_action:
        first = np.argmax(actions, axis=1)
        kept = np.zeros_like(actions)
        kept[np.arange(len(actions)), first] = actions[np.arange(len(actions)), first]
        actions = kept
    m = raw.num_candidates
    return RawRequest(
        user_id=raw.user_id, history_post_ids=raw.history_post_ids | np.uint64(1),
        history_author_ids=raw.history_author_ids, history_actions=actions,
        history_surface=raw.history_surface, candidate_post_ids=raw.candidate_post_ids,
        candidate_author_ids=raw.candidate_author_ids,
        candidate_surface=np.full(m, raw.candidate_surface[0] if m else 0, np.int64),
        request_id=raw.request_id,
    )  # fmt: skip


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _message(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def tweet_fields(i: int) -> bytes:
    """The TweetInfo fields xAI's home-mixer sets beside the ids (about 70 bytes: counts, the
    author's info, semantic ids, language, safety mask), in xAI's numbering, encoded by hand
    (our subset does not declare them): the server must parse past them and echo them back."""
    counts = b"".join(_field(n, 1000 + 37 * i + n) for n in (21, 22, 23, 24, 28, 34))
    return (counts + _field(19, 12) + _field(25, i % 2) + _field(30, 15_000)
            + _field(33, 4 * (i % 3)) + _message(11, _field(3, 1) + _field(6, 1))
            + _message(12, b"".join(_varint(100_000 + i * k) for k in range(1, 5)))
            + _message(14, _field(1, 7_000 + i) + _field(2, 1) + _field(3, 50_000 + i)))  # fmt: skip


def action_meta_fields(i: int) -> bytes:
    """The UserActionMeta fields an engagement carries beside its surface (about 110 bytes:
    the page, client, version, time zone and network as strings, times and ids), in xAI's
    numbering, encoded by hand."""

    def text(number: int, value: str) -> bytes:
        return _message(number, value.encode())

    return (_field(1, i) + text(2, "PAGE_HOME") + text(4, "iphone") + _field(5, 129032)
            + _field(6, 1_796_000_000_000 + i) + _field(7, 233) + text(15, "11.12.0-release.00")
            + text(17, "America/Los_Angeles") + text(19, "wifi") + _field(10, 1_796_000_000_000)
            + _field(24, 10**12 + i) + _field(25, 10**11 + i))  # fmt: skip


def _history_rows(raw: RawRequest):
    """(post, author, action indices, surface) per event: the features xAI's forms carry."""
    for e in raw.items(Part.HISTORY):
        yield e["post_id"], e["author_id"], e["actions"], e["product_surface"]


def candidate_set(raw: RawRequest, user_id: int | None = None) -> xpb.CandidateSet:
    return xpb.CandidateSet(
        userId=raw.user_id if user_id is None else user_id,
        candidates=[xpb.TweetInfo(tweetId=int(p), authorId=int(a))
                    for p, a in zip(raw.candidate_post_ids, raw.candidate_author_ids, strict=True)],
        productSurface=int(raw.candidate_surface[0]) if raw.num_candidates else 0,
    )  # fmt: skip


def _user_actions(raw: RawRequest) -> list[xpb.UserAction]:
    out = []
    for post, author, acts, surface in _history_rows(raw):
        assert len(acts) <= 1, "a UserAction carries one action"
        out.append(xpb.UserAction(
            userId=raw.user_id, tweetInfo=xpb.TweetInfo(tweetId=post, authorId=author),
            actionInfo=xpb.ActionInfo(actionName=action_value(acts[0]) if acts else IMPRESSION,
                                      userActionMeta=xpb.UserActionMeta(productSurface=surface)),
        ))  # fmt: skip
    return out


def _aggregated(raw: RawRequest) -> xpb.AggregatedUserActionList:
    entries = []
    for post, author, acts, surface in _history_rows(raw):
        values = [action_value(a) for a in acts] or [IMPRESSION]
        entries.append(xpb.AggregatedUserAction(  # its int64 userId is not read: left unset
            tweetInfo=xpb.TweetInfo(tweetId=post, authorId=author),
            actions=[xpb.ActionInfo(actionName=v, userActionMeta=xpb.UserActionMeta(
                productSurface=surface if k == 0 else 0)) for k, v in enumerate(values)],
        ))  # fmt: skip
    return xpb.AggregatedUserActionList(aggregatedUserActions=entries)


def sequence(raw: RawRequest, form: str) -> xpb.UserActionSequence:
    """The user's history as a UserActionSequence in `form` (not columnar_sequences)."""
    seq = xpb.UserActionSequence(userId=raw.user_id)
    if form == "userActions":
        seq.userActions.extend(_user_actions(raw))
    elif form == "orderedUserActionList":
        seq.userActionsData.orderedUserActionList.user_actions.extend(_user_actions(raw))
    elif form == "orderedAggregatedUserActionsList":
        seq.userActionsData.orderedAggregatedUserActionsList.CopyFrom(_aggregated(raw))
    elif form == "compressedUserActions":
        import zstandard

        inner = xpb.UserActionSequence(userId=raw.user_id)
        inner.userActionsData.orderedAggregatedUserActionsList.CopyFrom(_aggregated(raw))
        seq.userActionsData.compressedUserActions.CopyFrom(xpb.CompressedUserActionSequence(
            data=zstandard.ZstdCompressor().compress(inner.SerializeToString()),
            compression_type=xpb.ZSTD,
        ))  # fmt: skip
    else:
        raise ValueError(form)
    return seq


def arrow_history(raw: RawRequest, batches: int = 2) -> bytes:
    """The history as an Arrow IPC stream, the columns xAI's engine reads, in record batches
    of num_history // `batches` rows (at least one)."""
    import pyarrow as pa
    import pyarrow.ipc

    hot = np.zeros((raw.num_history, WIDTH), bool)
    for i, (_, _, acts, _) in enumerate(_history_rows(raw)):
        hot[i, [action_value(a) for a in acts]] = True
    table = pa.table({
        "tweetId": pa.array(raw.history_post_ids.view(np.int64)),
        "authorId": pa.array(raw.history_author_ids.view(np.int64)),
        "productSurface": pa.array(raw.history_surface.astype(np.int32)),
        "actionNameMultiHot": pa.FixedSizeListArray.from_arrays(
            pa.array(hot.reshape(-1)), WIDTH),
    })  # fmt: skip
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, raw.num_history // batches))
    return sink.getvalue()


def request(raws: list[RawRequest], form: str, **options) -> xpb.PredictNextActionsRequest:
    """One candidate set per request of `raws`, each user's history in `form`."""
    out = xpb.PredictNextActionsRequest(returnLogprob=True, **options)
    for raw in raws:
        out.candidateSets.append(candidate_set(raw))
        if form == "columnar_sequences":
            out.columnar_sequences.append(arrow_history(raw))
        else:
            out.sequences.append(sequence(raw, form))
    return out


def example(name: str) -> xpb.PredictNextActionsRequest:
    """examples/`name`, in protobuf's JSON mapping, as a request."""
    data = json.loads((ROOT / "examples" / name).read_text())
    return json_format.ParseDict(data, xpb.PredictNextActionsRequest())


def example_raw() -> RawRequest:
    """What every example holds: a user, four history events (a favorite, a repost, an
    impression on the following tab, a video quality view) and three candidates."""
    actions = np.zeros((4, len(ACTIONS)), np.uint8)
    for event, action in ((0, "favorite"), (1, "repost"), (3, "video_quality_view")):
        actions[event, ACTIONS.index(action)] = 1
    return RawRequest(
        user_id=4242424242,
        history_post_ids=np.array([7191089600892374487, 6353848000608806813, 740264374230832003,
                                   14696359123380530193], np.uint64),
        history_author_ids=np.array([804, 3815, 4150, 4931], np.uint64),
        history_actions=actions, history_surface=np.array([1, 1, 15, 1], np.int64),
        candidate_post_ids=np.array([15353075157857049030, 1234638223158467977,
                                     12831733888665064643], np.uint64),
        candidate_author_ids=np.array([4701, 1513, 2854], np.uint64),
        candidate_surface=np.ones(3, np.int64),
    )  # fmt: skip


def write_examples() -> None:
    """Write examples/xai-*.json from `example_raw` (the Arrow stream in one record batch):
    python -c "from tests.server.xai_forms import write_examples; write_examples()"."""
    raw = example_raw()
    for name, form in EXAMPLES.items():
        out = request([raw], form, metadata=name.removesuffix(".json"))
        if form == "columnar_sequences":
            out.columnar_sequences[0] = arrow_history(raw, batches=1)
        text = json.dumps(json_format.MessageToDict(out), indent=2)
        (ROOT / "examples" / name).write_text(text + "\n")
