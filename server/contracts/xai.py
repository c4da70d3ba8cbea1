"""xAI's ranking contract (`xai.recsys.v1.RecsysPredictor`, proto/xai/recsys/v1/recsys.proto):
its requests decoded into ours, our scores encoded into its responses. docs/xai-compat.md says
field by field what is honoured, ignored and refused.

Glossary: S candidate sets, n history events, m candidates, A the model's actions (19),
V the length of the ActionName-indexed vectors returned (1 + the largest ActionName value the
model predicts).

A request carries candidate sets and user-action sequences. Each set becomes one ranking
request of ours (a `RawRequest`), paired with its user's history: the sequence whose userId is
the set's, else the sequence at the set's position (`pair_sequences`), in whichever of the
contract's forms it comes (`history_of`): a list of UserAction (one action each), the same in a
container, a list of AggregatedUserAction (the union of an entry's actions), zstd-compressed,
or an Arrow IPC stream (`columnar_sequences`). Every set is then scored through the same queue
as a Rank call, and the response says, per candidate, what the request's mode asks for, as xAI's
engine decides it (`response_mode`): log(sigmoid(logit)) or the logit of each action at the
index of its ActionName value, the logits of the requested ActionName values as a map or a list
in request order, and the continuous values (our dwell_time head) as a vector or a map.

Every inflating path (a zstd history, an Arrow stream's compressed buffers) draws from one
budget per call (`server.contracts.inflate`: what the request could have been sent as uncompressed), an
Arrow stream is checked message by message before pyarrow reads it (`server.contracts.arrow_stream`),
and a history paired with several sets is decoded once. `decode_cost` estimates a request's
work from its wire format alone.

Decoding is numpy and protobuf only (pyarrow and zstandard are imported on first use), so a
frontend worker runs it without JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from model.config import PhoenixModelConfig
from request.actions import ACTIONS, NUM_ACTIONS
from request.features import Part, defaults
from request.raw import RawRequest
from server.config import Limits
from server.contracts import arrow_stream, inflate
from server.contracts.envelope import check_request_id, check_size
from server.contracts.wire import length_delimited, present_bytes, varint
from server.errors import InvalidArgument
from server.rpc import recsys_pb2 as xpb

# Our action -> xAI's ActionName: the 18 actions xAI's home-mixer reads, our first 18. Our 19th,
# dwell_time, has no ActionName: it is returned as the continuous value DWELL_TIME.
XAI_ACTION_OF: dict[str, str] = {
    "favorite": "SERVER_TWEET_FAV",
    "reply": "SERVER_TWEET_REPLY",
    "repost": "SERVER_TWEET_RETWEET",
    "photo_expand": "CLIENT_TWEET_PHOTO_EXPAND",
    "click": "CLIENT_TWEET_CLICK",
    "profile_click": "CLIENT_TWEET_CLICK_PROFILE",
    "video_quality_view": "CLIENT_TWEET_VIDEO_QUALITY_VIEW",
    "share": "CLIENT_TWEET_SHARE",
    "share_via_dm": "CLIENT_TWEET_CLICK_SEND_VIA_DIRECT_MESSAGE",
    "share_via_copy_link": "CLIENT_TWEET_SHARE_VIA_COPY_LINK",
    "dwell": "CLIENT_TWEET_RECAP_DWELLED",
    "quote": "SERVER_TWEET_QUOTE",
    "quoted_click": "CLIENT_QUOTED_TWEET_CLICK",
    "follow_author": "CLIENT_TWEET_FOLLOW_AUTHOR",
    "not_interested": "CLIENT_TWEET_NOT_INTERESTED_IN",
    "block_author": "CLIENT_TWEET_BLOCK_AUTHOR",
    "mute_author": "CLIENT_TWEET_MUTE_AUTHOR",
    "report": "CLIENT_TWEET_REPORT",
}
CONTINUOUS_ACTION = "dwell_time"  # our action returned as continuousActionsValues[DWELL_TIME]

MODELED = [a for a in ACTIONS if a in XAI_ACTION_OF]  # in our output order
# Our action index -> ActionName value, for the 18 modeled actions: int64 [18]
ACTION_VALUES = np.array([xpb.ActionName.Value(XAI_ACTION_OF[a]) for a in MODELED], np.int64)
OUR_INDEX = np.array([ACTIONS.index(a) for a in MODELED], np.int64)  # int64 [18]
VECTOR_LENGTH = int(ACTION_VALUES.max()) + 1  # V
# ActionName value -> our action index, or -1: int64 [V]
_OUR_ACTION_OF_VALUE = np.full(VECTOR_LENGTH, -1, np.int64)
_OUR_ACTION_OF_VALUE[ACTION_VALUES] = OUR_INDEX
DWELL_TIME = xpb.ContinuousActionName.Value("DWELL_TIME")
CONTINUOUS_LENGTH = DWELL_TIME + 1
# ContinuousActionName values the model predicts (indexToContinuousValues' keys): int64 [1]
CONTINUOUS_VALUES = np.array([DWELL_TIME], np.int64)
_CONTINUOUS_OURS = ACTIONS.index(CONTINUOUS_ACTION)  # its index in our actions
_CONTINUOUS_COLUMN = NUM_ACTIONS + _CONTINUOUS_OURS  # its probability's column in the scores
# The value of vector entries the model has no head for: log(0), a probability of 0 (see
# docs/xai-compat.md: a caller's weighted sum stays finite and unaffected).
NOT_PREDICTED = -math.inf
# ActionName values are below 256 (PLACE_HOLDER_255 is xAI's largest; its engine sends 64).
ACTION_NAME_VALUES = 256
MAX_MULTI_HOT = ACTION_NAME_VALUES  # the widest actionNameMultiHot read
# The most requestedActionIndices (and requestedContinuousActionIndices) a request may carry
# where they are read: every response row holds one entry per index.
MAX_REQUESTED = ACTION_NAME_VALUES
# The modes that return requested indices (in a map, in a list), and indexToContinuousValues.
REQUESTED_MODES = ("logmap", "logits_list")
_NO_INDICES = np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class History:
    """One user's history as our history features (`request.features`), oldest first: those
    xAI's contract carries (`_keep_posts`), any other at its default."""

    features: dict[str, np.ndarray]  # RawRequest field -> [n, ...]

    @classmethod
    def empty(cls) -> History:
        return cls(defaults(Part.HISTORY, 0))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.features[name]


EMPTY = History.empty()


@dataclasses.dataclass(frozen=True)
class ResponsePlan:
    """What the response needs besides the scores: the request's options and, per set, its
    user and its candidates as they are to be echoed."""

    mode: str  # "logprob" (topLogProbs), "logits", "logmap" (indexToLogits) or "logits_list"
    # (requestedActionLogits): see `response_mode`
    requested: np.ndarray  # int64 [k]: requestedActionIndices ("logmap": those below V)
    user_ids: tuple[int, ...]  # per set
    echoes: tuple[tuple[bytes, ...], ...]  # per set: each candidate's TweetInfo, serialized
    # int64 [c]: requestedContinuousActionIndices the model predicts, sorted, for REQUESTED_MODES
    continuous: np.ndarray = dataclasses.field(default_factory=lambda: _NO_INDICES)


def action_values_to_ours(values: np.ndarray) -> np.ndarray:
    """ActionName values int64 [k] -> our action index [k], -1 for actions not modeled."""
    values = np.asarray(values, np.int64)
    inside = (values >= 0) & (values < VECTOR_LENGTH)
    return np.where(inside, _OUR_ACTION_OF_VALUE[np.clip(values, 0, VECTOR_LENGTH - 1)], -1)


# -- decoding ------------------------------------------------------------------------------------


def decode_request(
    data: bytes, config: PhoenixModelConfig, limits: Limits
) -> tuple[str, list[RawRequest], ResponsePlan]:
    """A PredictNextActionsRequest's bytes -> (its `metadata` request id, one RawRequest per
    candidate set, what the response needs). InvalidArgument names the field of anything the
    model cannot score, or that inflates past the call's budget (`inflate.Budget`)."""
    check_size(len(data), limits)
    try:
        request = xpb.PredictNextActionsRequest.FromString(data)
    except Exception as e:  # DecodeError: bytes that do not parse
        raise InvalidArgument("request", f"not a valid PredictNextActionsRequest ({e})") from None
    check_request_id(request.metadata, "metadata")
    sets = request.candidateSets
    if not sets:
        raise InvalidArgument("candidateSets", "no candidate set: send at least one")
    if len(sets) > limits.max_candidate_sets:
        raise InvalidArgument(
            "candidateSets", f"{len(sets)} exceed max_candidate_sets={limits.max_candidate_sets}"
        )
    mode, requested, continuous = response_options(request)
    sequences = pair_sequences(request)
    columnar = pair_columnar(request)
    raws, user_ids, echoes = [], [], []
    vocab = config.product_surface_vocab_size
    bounds = Bounds(limits, vocab, inflate.Budget.for_request(len(data), limits))
    histories: dict[str, History] = {}  # by the field it came from: each decoded once
    for i, (candidate_set, sequence, arrow) in enumerate(
        zip(sets, sequences, columnar, strict=True)
    ):
        where = f"candidateSets[{i}]"
        history = _history_once(histories, sequence, arrow, bounds)
        m = len(candidate_set.candidates)
        if not m:
            raise InvalidArgument(f"{where}.candidates", "no candidates")
        if m > limits.max_candidates_per_request:
            raise InvalidArgument(f"{where}.candidates", f"{m} exceed max_candidates_per_request="
                                  f"{limits.max_candidates_per_request}")  # fmt: skip
        surface = candidate_set.productSurface
        if not 0 <= surface < vocab:
            raise InvalidArgument(
                f"{where}.productSurface", f"{surface} is outside the vocabulary [0, {vocab})"
            )
        ids, echo = [], []
        for c in candidate_set.candidates:  # one pass: ids, and the candidate to echo back
            ids.append((c.tweetId, c.authorId))
            echo.append(c.SerializeToString())
        ids = np.array(ids, np.uint64).reshape(m, 2)
        user = candidate_set.userId or (sequence[1].userId if sequence is not None else 0)
        candidates = defaults(Part.CANDIDATE, m, {
            "candidate_post_ids": ids[:, 0], "candidate_author_ids": ids[:, 1],
            "candidate_surface": np.full(m, surface, np.int64)})  # fmt: skip
        raws.append(RawRequest(user_id=int(user), **history.features, **candidates))
        user_ids.append(int(candidate_set.userId or user))
        if request.returnCandidateTweetIdOnly:
            echo = [_tweet_id_only(int(t)) for t in ids[:, 0]]
        echoes.append(tuple(echo))
    plan = ResponsePlan(mode, requested, tuple(user_ids), tuple(echoes), continuous)
    return request.metadata, raws, plan


def response_mode(request) -> str:
    """What a request asks to be returned, as xAI's engine decides it: returnLogitsList wins
    over returnLogMap, which wins over returnLogprob; with none of them, the logits."""
    if request.returnLogitsList:
        return "logits_list"
    if request.returnLogMap:
        return "logmap"
    return "logprob" if request.returnLogprob else "logits"


def response_options(request) -> tuple[str, np.ndarray, np.ndarray]:
    """(mode, requested ActionName values, requested ContinuousActionName values the model
    predicts) of a request, as ResponsePlan holds them; InvalidArgument when a mode that reads
    the indices gets more than MAX_REQUESTED of them."""
    mode = response_mode(request)
    if mode not in REQUESTED_MODES:
        return mode, _NO_INDICES, _NO_INDICES
    indices = []
    for field in ("requestedActionIndices", "requestedContinuousActionIndices"):
        values = getattr(request, field)
        if len(values) > MAX_REQUESTED:
            raise InvalidArgument(field, f"{len(values)} exceed the {MAX_REQUESTED} a request "
                                  "may ask for")  # fmt: skip
        indices.append(np.array(values, np.int64))
    requested, continuous = indices
    if mode == "logmap":  # a map holds the indices below V (the vectors' length), once each
        requested = requested[requested < VECTOR_LENGTH]
        requested = requested[np.sort(np.unique(requested, return_index=True)[1])]
    return mode, requested, np.intersect1d(continuous, CONTINUOUS_VALUES)


def _history_once(histories: dict[str, History], sequence, arrow, bounds: Bounds) -> History:
    """A set's history: its Arrow entry's, else its sequence's, else none. Decoded once per
    call however many sets pair with it: `histories` keeps each by the field it came from."""
    if arrow is not None:
        field = f"columnar_sequences[{arrow[0]}]"
        if field not in histories:
            histories[field] = history_from_arrow(arrow[1], field, bounds)
    elif sequence is not None:
        field = f"sequences[{sequence[0]}]"
        if field not in histories:
            histories[field] = history_of(sequence[1], field, bounds)
    else:
        return EMPTY
    return histories[field]


# decode_cost's unit is the service's: bytes of work, ~3 ns each (INLINE_BYTES, 16 KiB, is ~50
# us). Each candidate set past the first adds ~50 us (~8 us decoding, ~44 us hashing: measured
# on 2 cores with 300 events of history shared), so it counts as 16 KiB.
SET_COST = 16 * 1024
# decode_cost reads at most this many fields (tags and lengths, ~0.5 us each: ~0.1 ms at most)
# and beyond them takes the request to cost the most a request may. A request's own fields are
# its sequences, candidate sets and options; a sequence's are two or three, but in the
# `userActions` form, where the scan stops at the first action.
MAX_SCANNED_FIELDS = 128


def decode_cost(data: bytes, limits: Limits) -> int:
    """The bytes of work decoding `data` (a PredictNextActionsRequest) may cost, from its wire
    format's tags and lengths alone, never a parse: its length, plus the inflation budget
    (`limits.max_request_bytes`) when it holds a compressed history or an Arrow stream, plus
    SET_COST per candidate set past the first. Bytes that do not scan, or need more than
    MAX_SCANNED_FIELDS fields read, cost the most a request may."""
    if len(data) > limits.max_request_bytes:
        return len(data)  # refused before it is parsed
    most = len(data) + limits.max_request_bytes + (limits.max_candidate_sets - 1) * SET_COST
    try:
        sets, inflates = _scan(data)
    except _Unscannable:
        return most
    sets = min(sets, limits.max_candidate_sets)  # more are refused at once
    return len(data) + (limits.max_request_bytes if inflates else 0) + max(sets - 1, 0) * SET_COST


def _scan(data: bytes) -> tuple[int, bool]:
    """(candidate sets, whether a history inflates) of a PredictNextActionsRequest's bytes:
    `candidateSets` (2) counted, a non-empty `columnar_sequences` (13), or a `sequences` (1)
    -> `userActionsData` (4) -> `compressedUserActions` (1), looked for. A sequence with
    `userActions` (2) holds no other form (`history_of` refuses both): its scan stops there."""
    fields = _Fields(data)
    sets, inflates = 0, False
    for number, start, end in fields.within(0, len(data)):
        if number == 2:
            sets += 1
        elif number == 13 and end > start:
            inflates = True
        elif number == 1 and not inflates:
            for inner, s, e in fields.within(start, end):
                if inner == 2:
                    break
                if inner == 4 and any(n == 1 for n, _, _ in fields.within(s, e)):
                    inflates = True
    return sets, inflates


class _Unscannable(Exception):
    """Bytes that are not protobuf's wire format, or need more fields read than allowed."""


class _Fields:
    """Protobuf's wire format read by tags and lengths alone, MAX_SCANNED_FIELDS fields at
    most in all."""

    def __init__(self, data: bytes):
        self.data, self.left = data, MAX_SCANNED_FIELDS

    def within(self, at: int, end: int):
        """(number, start, end) of each length-delimited field of the message in
        data[at:end], the other fields skipped (each read counts); _Unscannable otherwise."""
        data = self.data
        while at < end:
            self.left -= 1
            if self.left < 0:
                raise _Unscannable
            key, at = _varint(data, at, end)
            wire = key & 7
            if wire == 0:
                at = _varint(data, at, end)[1]
            elif wire == 1 or wire == 5:
                at += 8 if wire == 1 else 4
            elif wire == 2:
                size, at = _varint(data, at, end)
                if size > end - at:
                    raise _Unscannable
                yield key >> 3, at, at + size
                at += size
            else:  # groups (3, 4) are not in this contract
                raise _Unscannable
        if at != end:
            raise _Unscannable


def _varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    """(value, where the next byte is) of the varint at `at`; _Unscannable when none ends
    within 10 bytes and data[:end]."""
    value = shift = 0
    for i in range(at, min(end, at + 10)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise _Unscannable


def pair_sequences(request) -> list[tuple[int, object] | None]:
    """The (index, UserActionSequence) each candidate set takes its history from, or None.

    Set i takes the last sequence whose userId is its own; failing that (or when its userId is
    0), with one set the last sequence, with several the sequence at its position. A sequence
    so paired must name no other user. InvalidArgument otherwise."""
    sequences, sets = request.sequences, request.candidateSets
    by_user = {s.userId: k for k, s in enumerate(sequences) if s.userId}  # the last wins
    out: list[tuple[int, object] | None] = []
    for i, candidate_set in enumerate(sets):
        k = by_user.get(candidate_set.userId) if candidate_set.userId else None
        if k is None:
            if len(sets) == 1:
                k = len(sequences) - 1 if sequences else None
            elif i < len(sequences):
                k = i
            elif sequences:
                raise InvalidArgument(
                    f"candidateSets[{i}].userId",
                    f"no sequence of user {candidate_set.userId}, and no sequence at position {i}",
                )
        if k is not None:
            owner = sequences[k].userId
            if owner and candidate_set.userId and owner != candidate_set.userId:
                raise InvalidArgument(
                    f"sequences[{k}].userId",
                    f"{owner} is not candidateSets[{i}].userId ({candidate_set.userId})",
                )
        out.append(None if k is None else (k, sequences[k]))
    return out


def pair_columnar(request) -> list[tuple[int, bytes] | None]:
    """The (index, Arrow bytes) each candidate set takes its history from, or None: with one
    set the last non-empty entry, with several entry i for set i (an empty entry: none)."""
    entries, sets = request.columnar_sequences, request.candidateSets
    if len(sets) == 1:
        found = [(k, e) for k, e in enumerate(entries) if e]
        return [found[-1] if found else None]
    if entries and len(entries) != len(sets):
        raise InvalidArgument(
            "columnar_sequences", f"{len(entries)} entries for {len(sets)} candidate sets: send "
            "one per set (empty for none) or none"
        )  # fmt: skip
    return [(k, e) if e else None for k, e in enumerate(entries)] or [None] * len(sets)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a history is checked against: the request limits, the surface vocabulary and
    what is left of the call's inflation budget."""

    limits: Limits
    vocab: int  # product surfaces are in [0, vocab)
    budget: inflate.Budget  # shared by every history of one call


def history_of(sequence, where: str, bounds: Bounds, compressed_ok: bool = True) -> History:
    """A UserActionSequence's history, in whichever form it carries it."""
    container = sequence.userActionsData
    form = container.WhichOneof("data")
    if form is not None and len(sequence.userActions):
        raise InvalidArgument(where, "send userActions or userActionsData, not both")
    if form is None:
        return _from_user_actions(sequence.userActions, f"{where}.userActions", bounds)
    here = f"{where}.userActionsData.{form}"
    if form == "orderedUserActionList":
        return _from_user_actions(container.orderedUserActionList.user_actions,
                                  f"{here}.user_actions", bounds)  # fmt: skip
    if form == "orderedAggregatedUserActionsList":
        return _from_aggregated(container.orderedAggregatedUserActionsList.aggregatedUserActions,
                                f"{here}.aggregatedUserActions", bounds)  # fmt: skip
    if not compressed_ok:
        raise InvalidArgument(here, "a compressed sequence may not hold another")
    inner = _decompress(container.compressedUserActions, here, bounds.budget)
    return history_of(inner, f"{here}.data", bounds, compressed_ok=False)


def _decompress(compressed, where: str, budget: inflate.Budget):
    if compressed.compression_type != xpb.ZSTD:
        raise InvalidArgument(f"{where}.compression_type",
                              f"{compressed.compression_type} is not ZSTD (1)")  # fmt: skip
    data = inflate.zstd(compressed.data, budget, f"{where}.data")
    try:
        return xpb.UserActionSequence.FromString(data)
    except Exception as e:
        raise InvalidArgument(f"{where}.data", f"not a UserActionSequence ({e})") from None


def _check_events(where: str, count: int, actions: int, limits: Limits) -> None:
    if count > limits.max_history_events:
        raise InvalidArgument(
            where, f"{count} exceed max_history_events={limits.max_history_events}"
        )
    if actions > limits.max_history_actions:
        raise InvalidArgument(
            where, f"{actions} actions exceed max_history_actions={limits.max_history_actions}"
        )


# Enum fields (ActionName, ProductSurface) are int32s and may be negative: they enter a uint64
# array of ids as their 32 bits, and come out signed again.
_U32 = 0xFFFFFFFF


def _signed(values: np.ndarray) -> np.ndarray:
    """int32 values held as their 32 bits in uint64 [...] -> int64 [...], signs restored."""
    return values.astype(np.uint32).view(np.int32).astype(np.int64)


def _from_user_actions(user_actions, where: str, bounds: Bounds) -> History:
    """One event per UserAction: its post, its one action, its surface."""
    n = len(user_actions)
    _check_events(where, n, n, bounds.limits)
    rows = []
    for a in user_actions:  # one pass, each message read once: ~1 us an event
        tweet, action = a.tweetInfo, a.actionInfo
        rows.append((tweet.tweetId, tweet.authorId, action.actionName & _U32,
                     action.userActionMeta.productSurface & _U32))  # fmt: skip
    rows = np.array(rows, np.uint64).reshape(n, 4)
    enums = _signed(rows[:, 2:])  # actionName, productSurface
    actions = np.zeros((n, NUM_ACTIONS), np.uint8)
    ours = action_values_to_ours(enums[:, 0])
    taken = ours >= 0
    actions[np.flatnonzero(taken), ours[taken]] = 1
    return _keep_posts(rows[:, 0], rows[:, 1], actions, enums[:, 1], bounds.vocab,
                       f"{where}[{{}}].actionInfo.userActionMeta.productSurface")  # fmt: skip


def _from_aggregated(entries, where: str, bounds: Bounds) -> History:
    """One event per AggregatedUserAction: its post, the union of its actions, the surface of
    its first action."""
    n = len(entries)
    _check_events(where, n, 0, bounds.limits)
    rows, values, counts = [], [], []
    for e in entries:  # one pass, each message read once
        tweet, taken = e.tweetInfo, e.actions
        counts.append(len(taken))
        surface = taken[0].userActionMeta.productSurface & _U32 if taken else 0
        rows.append((tweet.tweetId, tweet.authorId, surface))
        values.extend([a.actionName for a in taken])
    _check_events(where, n, len(values), bounds.limits)
    rows = np.array(rows, np.uint64).reshape(n, 3)
    actions = np.zeros((n, NUM_ACTIONS), np.uint8)
    ours = action_values_to_ours(np.array(values, np.int64))
    event = np.repeat(np.arange(n), np.array(counts, np.int64))
    taken = ours >= 0
    actions[event[taken], ours[taken]] = 1
    return _keep_posts(rows[:, 0], rows[:, 1], actions, _signed(rows[:, 2]), bounds.vocab,
                       f"{where}[{{}}].actions[0].userActionMeta.productSurface")  # fmt: skip


def history_from_arrow(data: bytes, where: str, bounds: Bounds) -> History:
    """An Arrow IPC stream's rows as events: columns tweetId and authorId (integers, required),
    productSurface (integer) and actionNameMultiHot (a fixed-size list of booleans indexed by
    ActionName value, at most MAX_MULTI_HOT wide), each optional; other columns must be
    fixed-width and are not read. Every message is checked before it is read, and every
    record batch fully validated (`server.contracts.arrow_stream`)."""
    import pyarrow as pa

    schema, batches = arrow_stream.read_stream(
        data, where, bounds.limits.max_history_events, bounds.budget, check_history_columns
    )
    rows = sum(b.num_rows for b in batches)
    if len(batches) == 1:
        (columns,) = batches
    else:  # one array per column, whatever the batches
        columns = pa.Table.from_batches(batches, schema=schema).combine_chunks()
    return _arrow_events(columns, schema, rows, where, bounds)


def check_history_columns(schema) -> None:
    """The columns a history reads, each once and of the type it is read as
    (`history_from_arrow`); arrow_stream.ColumnError naming the column otherwise."""
    import pyarrow as pa

    names = schema.names
    for name in ("tweetId", "authorId", "productSurface", "actionNameMultiHot"):
        if names.count(name) > 1:
            raise arrow_stream.ColumnError(name, "more than one column of that name")
    for name in ("tweetId", "authorId"):
        if name not in names:
            raise arrow_stream.ColumnError(name, "missing column")
    for name in ("tweetId", "authorId", "productSurface"):
        if name in names and not pa.types.is_integer(kind := schema.field(name).type):
            raise arrow_stream.ColumnError(name, f"is {kind}, not an integer column")
    if "actionNameMultiHot" in names:
        kind = schema.field("actionNameMultiHot").type
        if not (pa.types.is_fixed_size_list(kind) and pa.types.is_boolean(kind.value_type)):
            raise arrow_stream.ColumnError("actionNameMultiHot",
                                           f"is {kind}, not a fixed-size list of booleans")  # fmt: skip
        if kind.list_size > MAX_MULTI_HOT:
            raise arrow_stream.ColumnError("actionNameMultiHot",
                                           f"{kind.list_size} wide, over {MAX_MULTI_HOT}")  # fmt: skip


def _arrow_events(columns, schema, rows: int, where: str, bounds: Bounds) -> History:
    """A validated batch's (or table's) rows as events (see `history_from_arrow`), its
    schema checked by `check_history_columns`."""
    import pyarrow as pa

    names = schema.names

    def array(name: str):
        column = columns.column(names.index(name))
        return column.chunk(0) if isinstance(column, pa.ChunkedArray) else column

    def integers(name: str) -> np.ndarray | None:
        if name not in names:
            return None
        if not rows:
            return np.zeros(0, np.int64)
        column = array(name)
        if column.null_count:
            column = column.fill_null(0)
        return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    post_ids = integers("tweetId").view(np.uint64)
    author_ids = integers("authorId").view(np.uint64)
    surfaces = integers("productSurface")
    surfaces = np.zeros(rows, np.int64) if surfaces is None else surfaces
    actions = np.zeros((rows, NUM_ACTIONS), np.uint8)
    if "actionNameMultiHot" in names:
        width = schema.field("actionNameMultiHot").type.list_size
        if rows and width:
            lists = array("actionNameMultiHot")
            values = lists.values.slice(lists.offset * width, rows * width)
            if values.null_count:
                values = values.fill_null(False)
            flags = values.to_numpy(zero_copy_only=False).reshape(rows, width)
            if lists.null_count:  # a null list: no action
                flags[lists.is_null().to_numpy(zero_copy_only=False)] = False
            seen = ACTION_VALUES < width
            actions[:, OUR_INDEX[seen]] = flags[:, ACTION_VALUES[seen]]
    return _keep_posts(
        post_ids, author_ids, actions, surfaces, bounds.vocab, f"{where}.productSurface[{{}}]"
    )


def _keep_posts(post_ids, author_ids, actions, surfaces, vocab: int, surface_field: str
                ) -> History:  # fmt: skip
    """The events that name a post (tweetId 0 is no post: dropped, as xAI's server drops it),
    after checking every surface is one of the model's (`surface_field` names event i's)."""
    bad = np.flatnonzero((surfaces < 0) | (surfaces >= vocab))
    if bad.size:
        i = int(bad[0])
        raise InvalidArgument(surface_field.format(i),
                              f"{int(surfaces[i])} is outside the vocabulary [0, {vocab})")  # fmt: skip
    keep = post_ids != 0
    features = defaults(Part.HISTORY, len(post_ids), {
        "history_post_ids": post_ids, "history_author_ids": author_ids,
        "history_actions": actions, "history_surface": surfaces})  # fmt: skip
    return History({name: values[keep] for name, values in features.items()})


def _tweet_id_only(tweet_id: int) -> bytes:
    return varint(1 << 3 | 0) + varint(tweet_id) if tweet_id else b""


# -- encoding ------------------------------------------------------------------------------------


def log_sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 log(sigmoid(x)), exact for large |x| (no log of a rounded-to-0 probability)."""
    x = np.asarray(logits, np.float32)
    return (np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))).astype(np.float32)


def action_vectors(values: np.ndarray, width: int = VECTOR_LENGTH) -> np.ndarray:
    """Per-action values float32 [m, A] (our order) -> ActionName-indexed float32 [m, width]
    (width >= V), with NOT_PREDICTED where the model has no head."""
    out = np.full((len(values), width), NOT_PREDICTED, np.float32)
    out[:, ACTION_VALUES] = values[:, OUR_INDEX]
    return out


def requested_values(values: np.ndarray, requested: np.ndarray) -> np.ndarray:
    """Per-action values float32 [m, A] (our order) -> the value of each requested ActionName,
    float32 [m, k], NOT_PREDICTED where the model has no head (any value from V up included:
    they all read column V, past every head)."""
    return action_vectors(values, VECTOR_LENGTH + 1).take(requested, axis=1, mode="clip")


def continuous_vectors(scores: np.ndarray) -> np.ndarray:
    """Scores float32 [m, 2A] -> ContinuousActionName-indexed float32 [m, CONTINUOUS_LENGTH]:
    our dwell_time probability at DWELL_TIME, 0 at the slots the model has no head for."""
    out = np.zeros((len(scores), CONTINUOUS_LENGTH), "<f4")
    out[:, DWELL_TIME] = scores[:, _CONTINUOUS_COLUMN]
    return out


def encode_response(plan: ResponsePlan, scores: Sequence[np.ndarray], versions: Sequence[str],
                    pod: str | None, node: str | None) -> bytes:  # fmt: skip
    """A serialized PredictNextActionsResponse: per set, per candidate, the candidate echoed and
    its scores (`scores[i]` float32 [m, 2A]: logits, then probabilities, as the queue returns
    them), `versions[i]` as the set's checkpointPath. The score fields of every candidate are
    one numpy array; each record is then three slices joined, not a message object."""
    out = bytearray()
    for user, echoes, score, version in zip(plan.user_ids, plan.echoes, scores, versions,
                                            strict=True):  # fmt: skip
        fields = _score_fields(plan, score)  # uint8 [m, F]
        width, flat = fields.shape[1], fields.tobytes()
        heads: dict[int, bytes] = {}  # a record's head by its candidate's length
        parts = [_field_varint(1, user)]
        for i, echo in enumerate(echoes):
            head = heads.get(len(echo))
            if head is None:
                candidate = varint(1 << 3 | 2) + varint(len(echo))
                size = len(candidate) + len(echo) + width
                head = heads[len(echo)] = varint(2 << 3 | 2) + varint(size) + candidate
            parts += (head, echo, flat[i * width : (i + 1) * width])
        parts.append(present_bytes(3, version.encode()))
        out += length_delimited(1, b"".join(parts))
    for number, text in ((3, pod), (4, node)):
        if text is not None:  # `optional`: present even when empty
            out += varint(number << 3 | 2) + varint(len(text.encode())) + text.encode()
    return bytes(out)


def _score_fields(plan: ResponsePlan, scores: np.ndarray) -> np.ndarray:
    """Each candidate's serialized score fields (all but its candidate), in field number
    order: uint8 [m, F]."""
    m = len(scores)
    logits = scores[:, :NUM_ACTIONS]
    if plan.mode in REQUESTED_MODES:
        values = requested_values(logits, plan.requested)  # [m, k]
        continuous = []
        if len(plan.continuous):
            kept = continuous_vectors(scores)[:, plan.continuous]  # [m, c]
            continuous = _float_map(7, plan.continuous, kept)
        if plan.mode == "logmap":  # indexToLogits (5), indexToContinuousValues (7)
            parts = _float_map(5, plan.requested, values) + continuous
        else:  # indexToContinuousValues (7), requestedActionLogits (12)
            parts = continuous + _packed_floats(12, values)
        return np.concatenate(parts, axis=1) if parts else np.zeros((m, 0), np.uint8)
    field = 3 if plan.mode == "logprob" else 2  # topLogProbs or logits
    values = log_sigmoid(logits) if plan.mode == "logprob" else logits
    vectors = _packed_floats(field, action_vectors(values))
    return np.concatenate(vectors + _packed_floats(6, continuous_vectors(scores)), axis=1)


def _packed_floats(number: int, values: np.ndarray) -> list[np.ndarray]:
    """Field `number`, a packed repeated float holding row i of `values` float32 [m, k] in
    record i: its parts, uint8 [m, *] each to be joined (none when k is 0: an empty field)."""
    m, k = values.shape
    if not k:
        return []
    return [_rows(varint(number << 3 | 2) + varint(4 * k), m),
            np.ascontiguousarray(values, "<f4").view(np.uint8)]  # fmt: skip


def _float_map(number: int, keys: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """Field `number`, a map<uint32, float> with an entry {keys[j]: values[i, j]} per key in
    record i (`values` float32 [m, k]): its parts, uint8 [m, *] each to be joined."""
    m = len(values)
    values = values.astype("<f4", copy=False)
    parts = []
    for k, column in zip(keys, values.T, strict=True):
        entry = b"\x08" + varint(int(k)) + b"\x15"  # key, then the value's tag
        parts += (_rows(varint(number << 3 | 2) + varint(len(entry) + 4) + entry, m),
                  column[:, None].view(np.uint8))  # fmt: skip
    return parts


def _rows(data: bytes, m: int) -> np.ndarray:
    """`data` as every row of a uint8 [m, len(data)]."""
    return np.broadcast_to(np.frombuffer(data, np.uint8), (m, len(data)))


def _field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


# -- reading a response (clients) ----------------------------------------------------------------


def distribution_probabilities(distribution, requested: Sequence[int] = ()) -> np.ndarray:
    """One NextActionDistribution read back as probabilities in our action order, float64 [A],
    NaN for the actions it carries none of: exp(topLogProbs), else sigmoid of its logits,
    indexToLogits or requestedActionLogits (entry j is `requested[j]`'s: the request's
    requestedActionIndices); dwell_time from continuousActionsValues or
    indexToContinuousValues."""
    if len(distribution.topLogProbs):
        vector = np.exp(np.array(distribution.topLogProbs, np.float64))
    elif len(distribution.logits):
        vector = _sigmoid(np.array(distribution.logits, np.float64))
    else:
        by_value = dict(distribution.indexToLogits)
        by_value.update(zip(requested, distribution.requestedActionLogits, strict=False))
        vector = np.full(VECTOR_LENGTH, np.nan)
        for value, logit in by_value.items():
            if value < VECTOR_LENGTH:
                vector[value] = _sigmoid(logit)
    out = np.full(NUM_ACTIONS, np.nan)
    seen = ACTION_VALUES < len(vector)
    out[OUR_INDEX[seen]] = vector[ACTION_VALUES[seen]]
    continuous = distribution.continuousActionsValues
    if len(continuous) > DWELL_TIME:
        out[_CONTINUOUS_OURS] = continuous[DWELL_TIME]
    elif DWELL_TIME in distribution.indexToContinuousValues:
        out[_CONTINUOUS_OURS] = distribution.indexToContinuousValues[DWELL_TIME]
    return out


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))
