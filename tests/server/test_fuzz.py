"""Property-based fuzzing of the real server over one real gRPC channel.

Hypothesis sends Rank and GetModelInfo bytes to a `phoenix-ranker serve` of this module's own
(one process, a small shape plan and small request limits, so that requests at and just over
every limit are cheap to build and to score). Strategies, mixed:

* raw bytes: arbitrary bytes, and long repetitions of short ones (up to the transport's
  limit, past the service's own);
* structured requests: every field of RankRequest, encoded by hand so that one request can
  mix row and columnar forms, carry unknown fields and known fields with the wrong wire type
  at every level, packed and unpacked actions, ids 0 and 2^64-1, out-of-vocabulary surfaces,
  undefined/unspecified/duplicate actions, action masks with high bits, columns of mismatched
  lengths, request ids with control characters, newlines, multi-byte characters, 128 and 129
  bytes, or bytes that are not UTF-8, and lists at, and one past, the server's limits;
* mutations of valid requests: truncations, byte and bit flips, deletions, insertions,
  duplicated slices, junk spliced in front or behind;
* GetModelInfo with arbitrary bytes;
* xAI's PredictNextActions: arbitrary bytes, mutations of valid requests in every history
  form, and valid requests whose Arrow stream or zstd frame is arbitrary or mutated bytes;
* the hostile corpus (tests/server/hostile.py: zstd and Arrow bombs, lying headers, shared
  histories, protobuf garbage) built for this server's limits, each case answered with one of
  its codes within seconds.

Every Rank call is judged against an oracle written from the proto's comments and the
server's limits (`expected_violations`, which uses the protobuf runtime only to parse):

* the status is OK or INVALID_ARGUMENT: calls go one at a time to an idle server with a
  generous deadline, so the load-dependent codes (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
  UNAVAILABLE) cannot arise, and INTERNAL or UNKNOWN is a server defect;
* INVALID_ARGUMENT exactly when the oracle finds a violation, and its message starts with
  "<field path>: " where the path is a real field path of the proto (or `request` for the
  message as a whole) and one of the violations the oracle found;
* an OK response has one score row per candidate, in request order, 19 finite logits and
  probabilities in [0, 1] each, the request's id echoed (or one assigned) and the model
  version of GetModelInfo; and the same request re-sent in the canonical columnar form
  (unknown fields dropped, actions as masks) gets bit-identical logits.

GetModelInfo must answer OK with the model's info for bytes that parse as a (field-less)
GetModelInfoRequest and INVALID_ARGUMENT for bytes that do not, never UNKNOWN.
PredictNextActions must answer OK (one distribution per candidate, log-probabilities at most
0) or INVALID_ARGUMENT naming a field of its request, never anything else.

After the run (`test_the_server_survived_the_fuzz`, last in the module): the process is
alive, a fixed reference request's logits are bit-identical to those before the fuzz, the
server's `phoenix_requests_total` counted every Rank and GetModelInfo call under the code the
client saw, and the log has no traceback and no error record.

Budget: 1,000 generated cases per run (CI; the explicit `@example`s come on top), about 10 s
after the server's warm-up on two cores, derandomized so that every CI run tries the same
cases. `PHOENIX_FUZZ_CASES=20000` (any number) runs that many cases in total instead, with
random seeds (a failure prints a `@reproduce_failure` blob and is saved in Hypothesis's
example database, `.hypothesis/`; `--hypothesis-seed=N` fixes the seed). Add
`--hypothesis-show-statistics` to see which codes and fields the cases reached.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from request.actions import NUM_ACTIONS
from request.schema import MAX_REQUEST_ID_BYTES
from server.config import Limits
from server.contracts.convert import raw_request_to_columnar_pb
from server.rpc import ranking_pb2 as pb
from server.rpc import recsys_pb2 as xpb
from tests.helpers import random_request, varint
from tests.server import hostile, xai_forms
from tests.server.harness import ServerProcess

pytestmark = pytest.mark.slow

RANK = "/phoenix.ranking.v1.RankingService/Rank"
MODEL_INFO = "/phoenix.ranking.v1.RankingService/GetModelInfo"
PREDICT = "/xai.recsys.v1.RecsysPredictor/PredictNextActions"
METHODS = ("Rank", "GetModelInfo", "PredictNextActions")

# The fuzzed server's limits: small, so that lists at and past them are cheap to send and
# to score; the byte limit is above the 16 KiB beyond which requests are decoded off the
# event loop (server.door.service.INLINE_BYTES), so both paths are fuzzed.
MAX_CANDIDATES = 96
MAX_HISTORY = 600
MAX_ACTIONS = 1500
MAX_BYTES = 48 * 1024
TRANSPORT_BYTES = 2 * MAX_BYTES  # gRPC's own limit (server.door.transport.transport_limit)
FLAGS = ("--max-batch-size", "2", "--candidate-buckets", "8,32", "--max-batch-wait-ms", "1",
         "--max-candidates-per-request", str(MAX_CANDIDATES),
         "--max-history-events", str(MAX_HISTORY),
         "--max-history-actions", str(MAX_ACTIONS),
         "--max-request-bytes", str(MAX_BYTES))  # fmt: skip
VOCAB = 16  # the default model's product_surface_vocab_size (checked against GetModelInfo)
TIMEOUT = 60.0  # per call: far above any fuzzed request's work

# --- budget -----------------------------------------------------------------------------

CI_CASES = 1000
_OPT_IN = os.environ.get("PHOENIX_FUZZ_CASES", "").strip()
TOTAL_CASES = int(_OPT_IN) if _OPT_IN else CI_CASES
# Share of the total per strategy (the explicit @example cases come on top).
SHARES = {"raw": 0.15, "structured": 0.40, "mutated": 0.35, "model_info": 0.10, "xai": 0.25}


def fuzz_settings(kind: str) -> settings:
    return settings(
        max_examples=max(1, round(TOTAL_CASES * SHARES[kind])),
        deadline=None,
        derandomize=not _OPT_IN,
        database=None if not _OPT_IN else settings.default.database,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# --- wire format --------------------------------------------------------------------------


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(number, 2) + varint(len(payload)) + payload


# --- the oracle ---------------------------------------------------------------------------


def expected_violations(data: bytes) -> set[str]:
    """Every field path the server may name for `data`; empty: the request is valid.

    Written from ranking.proto's comments and this server's limits; the protobuf runtime is
    used only to parse. Columnar product surfaces may be named in the proto's terms or in
    the row form's (`candidates[3].product_surface`, what the server names them today).
    """
    if len(data) > MAX_BYTES:
        return {"request"}
    try:
        r = pb.RankRequest.FromString(data)
    except DecodeError:
        return {"request"}
    bad: set[str] = set()
    if len(r.request_id.encode()) > MAX_REQUEST_ID_BYTES:
        bad.add("request_id")
    if r.HasField("history_columns"):
        c = r.history_columns
        n = len(c.post_ids)
        if len(r.history):
            bad.add("history")
        if n > MAX_HISTORY:
            bad.add("history_columns")
        for name in ("author_ids", "action_masks", "product_surfaces"):
            if len(getattr(c, name)) != n:
                bad.add(f"history_columns.{name}")
        for i, mask in enumerate(c.action_masks):
            if mask >> NUM_ACTIONS:
                bad.add(f"history_columns.action_masks[{i}]")
        for i, s in enumerate(c.product_surfaces):
            if s >= VOCAB:
                bad |= {f"history_columns.product_surfaces[{i}]", f"history[{i}].product_surface"}
    else:
        if len(r.history) > MAX_HISTORY:
            bad.add("history")
        if sum(len(e.actions) for e in r.history) > MAX_ACTIONS:
            bad.add("history.actions")
        for i, e in enumerate(r.history):
            for j, a in enumerate(e.actions):
                if not 1 <= a <= NUM_ACTIONS:
                    bad.add(f"history[{i}].actions[{j}]")
            if e.product_surface >= VOCAB:
                bad.add(f"history[{i}].product_surface")
    if r.HasField("candidate_columns"):
        c = r.candidate_columns
        n = len(c.post_ids)
        if len(r.candidates):
            bad.add("candidates")
        if n > MAX_CANDIDATES:
            bad.add("candidate_columns")
        for name in ("author_ids", "product_surfaces"):
            if len(getattr(c, name)) != n:
                bad.add(f"candidate_columns.{name}")
        for i, s in enumerate(c.product_surfaces):
            if s >= VOCAB:
                bad |= {
                    f"candidate_columns.product_surfaces[{i}]",
                    f"candidates[{i}].product_surface",
                }
    else:
        if len(r.candidates) > MAX_CANDIDATES:
            bad.add("candidates")
        for i, c in enumerate(r.candidates):
            if c.product_surface >= VOCAB:
                bad.add(f"candidates[{i}].product_surface")
    return bad


_SEGMENT = re.compile(r"([a-z_]+)(?:\[(\d+)\])?")


def is_field_path(path: str) -> bool:
    """`request` (the message as a whole) or a path of RankRequest's fields, with indices
    only on repeated ones: `candidates[3].product_surface`, `history.actions`."""
    if path == "request":
        return True
    desc = pb.RankRequest.DESCRIPTOR
    for segment in path.split("."):
        m = _SEGMENT.fullmatch(segment)
        if desc is None or m is None or m[1] not in desc.fields_by_name:
            return False
        field = desc.fields_by_name[m[1]]
        if m[2] is not None and not field.is_repeated:
            return False
        desc = field.message_type
    return True


def sent_candidate_ids(data: bytes) -> list[int]:
    r = pb.RankRequest.FromString(data)
    if r.HasField("candidate_columns"):
        return list(r.candidate_columns.post_ids)
    return [c.post_id for c in r.candidates]


# --- the server and the channel -----------------------------------------------------------


class Fuzzed:
    """The module's server, its one channel, and what the client saw."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self._rank = self.channel.unary_unary(RANK)  # bytes in, bytes out
        self._model_info = self.channel.unary_unary(MODEL_INFO)
        self._predict = self.channel.unary_unary(PREDICT)
        # Calls made, by method and the code the client received.
        self.codes: dict[str, Counter[str]] = {m: Counter() for m in METHODS}
        self.counts_before = self.counts()
        code, body = self.call_model_info(b"")
        assert code == grpc.StatusCode.OK, (code, body)
        self.info = pb.ModelInfo.FromString(body)
        self.reference = reference_logits(self)

    def _call(self, method: str, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
        stub = {"Rank": self._rank, "GetModelInfo": self._model_info,
                "PredictNextActions": self._predict}[method]  # fmt: skip
        try:
            code, result = grpc.StatusCode.OK, stub(data, timeout=TIMEOUT)
        except grpc.RpcError as e:
            code, result = e.code(), e.details() or ""
        self.codes[method][code.name] += 1
        return code, result

    def call_rank(self, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
        return self._call("Rank", data)

    def call_model_info(self, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
        return self._call("GetModelInfo", data)

    def call_predict(self, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
        return self._call("PredictNextActions", data)

    def counts(self) -> dict[str, Counter[str]]:
        """phoenix_requests_total from /metrics: {method: {code: calls}}."""
        out: dict[str, Counter[str]] = {m: Counter() for m in METHODS}
        pattern = re.compile(r"phoenix_requests_total\{code=(\w+),method=(\w+)\}")
        for key, value in self.server.metrics().items():
            if (m := pattern.fullmatch(key)) and m[2] in out:
                out[m[2]][m[1]] = int(value)
        return out

    def counted_since_start(self) -> dict[str, Counter[str]]:
        now = self.counts()
        return {method: now[method] - self.counts_before[method] for method in now}


REFERENCE = raw_request_to_columnar_pb(
    random_request(np.random.default_rng(20240611), 40, 45, "fuzz-reference")
).SerializeToString()


def reference_logits(fuzzed: Fuzzed) -> np.ndarray:
    code, body = fuzzed.call_rank(REFERENCE)
    assert code == grpc.StatusCode.OK, (code, body)
    response = pb.RankResponse.FromString(body)
    assert len(response.scores) == 45
    return np.array([s.logits for s in response.scores], np.float32)


@pytest.fixture(scope="module")
def fuzzed(compilation_cache):
    with ServerProcess(*FLAGS, env=compilation_cache) as server:
        f = Fuzzed(server)
        assert f.info.product_surface_vocab_size == VOCAB
        assert f.info.max_candidates_per_request == MAX_CANDIDATES
        assert f.info.max_history_events == MAX_HISTORY
        assert len(f.info.actions) == NUM_ACTIONS
        try:
            yield f
        finally:
            f.channel.close()


# --- the per-call properties --------------------------------------------------------------

EXPECTED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def check_rank(fuzzed: Fuzzed, data: bytes) -> None:
    assert len(data) <= TRANSPORT_BYTES  # beyond it gRPC refuses the call before the service
    expected = expected_violations(data)
    if expected != {"request"}:
        note(f"request: {pb.RankRequest.FromString(data)!r:.2000}")
    note(f"{len(data)} bytes; expected violations: {sorted(expected)[:20]}")
    code, body = fuzzed.call_rank(data)
    assert code in EXPECTED_CODES, f"Rank answered {code.name}: {body!r}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = body.split(": ", 1)[0]
        event(f"INVALID_ARGUMENT {re.sub(r'[0-9]+', 'i', field)}")  # --hypothesis-show-statistics
        assert ": " in body and is_field_path(field), f"the message names no field: {body!r}"
        assert expected, f"a valid request was refused: {body!r}"
        assert field in expected, f"{body!r} names none of {sorted(expected)[:20]}"
        return
    assert not expected, f"OK for a request with invalid {sorted(expected)[:20]}"
    response = pb.RankResponse.FromString(body)
    event(f"OK, {'no' if not response.scores else 'some'} candidates")
    assert [s.post_id for s in response.scores] == sent_candidate_ids(data)
    assert all(len(s.logits) == len(s.probabilities) == NUM_ACTIONS for s in response.scores)
    logits = np.array([list(s.logits) for s in response.scores], np.float32)
    probabilities = np.array([list(s.probabilities) for s in response.scores], np.float32)
    assert np.isfinite(logits).all(), "non-finite logits"
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    request = pb.RankRequest.FromString(data)
    assert response.request_id == request.request_id if request.request_id else response.request_id
    assert response.model_version == fuzzed.info.model_version
    # The same request in the canonical columnar form (no unknown fields, fields in order,
    # packed, actions as masks) has bit-identical logits: calls go one at a time, so both
    # are computed in the same batch shapes.
    twin = columnar_twin(request)
    if response.scores and twin != data:
        code, body = fuzzed.call_rank(twin)
        assert code == grpc.StatusCode.OK, (code, body)
        twin_logits = np.array([list(s.logits) for s in pb.RankResponse.FromString(body).scores])
        np.testing.assert_array_equal(
            twin_logits.astype(np.float32).view(np.uint32), logits.view(np.uint32)
        )


def columnar_twin(r: pb.RankRequest) -> bytes:
    """`r` in the columnar form, as a client library would serialize it."""
    twin = pb.RankRequest(user_id=r.user_id, request_id=r.request_id)
    if r.HasField("history_columns"):
        twin.history_columns.CopyFrom(r.history_columns)
    else:
        h = twin.history_columns
        h.SetInParent()
        for e in r.history:
            h.post_ids.append(e.post_id)
            h.author_ids.append(e.author_id)
            h.action_masks.append(sum(1 << (a - 1) for a in set(e.actions)))
            h.product_surfaces.append(e.product_surface)
    if r.HasField("candidate_columns"):
        twin.candidate_columns.CopyFrom(r.candidate_columns)
    else:
        c = twin.candidate_columns
        c.SetInParent()
        for x in r.candidates:
            c.post_ids.append(x.post_id)
            c.author_ids.append(x.author_id)
            c.product_surfaces.append(x.product_surface)
    twin.DiscardUnknownFields()
    return twin.SerializeToString()


# --- strategies ---------------------------------------------------------------------------

U64 = st.one_of(
    st.sampled_from([0, 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)
)
U32_EDGES = [VOCAB, VOCAB + 1, 255, 2**31 - 1, 2**31, 2**32 - 1]
GOOD_SURFACE = st.integers(0, VOCAB - 1)
ANY_SURFACE = st.one_of(GOOD_SURFACE, st.sampled_from(U32_EDGES), st.integers(0, 2**32 - 1))
GOOD_ACTION = st.integers(1, NUM_ACTIONS)
ANY_ACTION = st.one_of(
    GOOD_ACTION,
    st.sampled_from([0, NUM_ACTIONS + 1, -1, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)
GOOD_MASK = st.integers(0, 2**NUM_ACTIONS - 1)
ANY_MASK = st.one_of(
    GOOD_MASK,
    st.sampled_from([1 << NUM_ACTIONS, 1 << 31, 2**32 - 1]),
    GOOD_MASK.map(lambda m: m | 1 << NUM_ACTIONS),  # just one bit too high
    st.integers(0, 2**32 - 1),
)
ODD_TEXT = [
    "\n",
    "\r\n",
    "\x00",
    "\x1b[31m",
    "\t",
    "\u2028",
    "\ufeff",
    "é",
    "\U0001f600",
    '"}',
    "\\",
]
GOOD_REQUEST_ID = st.one_of(
    st.just(""),
    st.lists(st.sampled_from(ODD_TEXT) | st.text(max_size=4), max_size=12).map("".join),
    st.text(max_size=40),
    st.sampled_from(["x" * 128, "é" * 64, "\U0001f600" * 32, "\n" * 128]),
).map(lambda s: s.encode()[:MAX_REQUEST_ID_BYTES].decode(errors="ignore"))  # at most 128 bytes
BAD_REQUEST_ID = st.sampled_from(["x" * 129, "é" * 65, "\U0001f600" * 33, "\n" * 200, "a" * 1000])


def mostly(draw, good, bad, valid: bool):
    """`good`, or (when not forced valid) `bad` one time in five."""
    if valid or draw(st.integers(0, 4)):
        return draw(good)
    return draw(bad)


@st.composite
def junk_fields(draw, first_unknown: int, valid: bool) -> bytes:
    """0-3 fields the message does not define (or, when not forced valid, also known field
    numbers, with any wire type: the wrong one, or the right one with garbage)."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        if valid or draw(st.booleans()):
            number = draw(st.integers(first_unknown, 40) | st.integers(first_unknown, 2**29 - 1))
        else:
            number = draw(st.integers(1, first_unknown - 1))
        wire = draw(st.sampled_from([0, 1, 2, 5, 3]))
        if wire == 0:
            out += tag(number, 0) + varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += tag(number, 1) + draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += tag(number, 5) + draw(st.binary(min_size=4, max_size=4))
        elif wire == 2:
            out += ld(number, draw(st.binary(max_size=24)))
        else:  # a well-formed group holding a varint
            out += tag(number, 3) + tag(1, 0) + varint(draw(st.integers(0, 300))) + tag(number, 4)
    return out


def maybe_junk(draw, first_unknown: int, valid: bool) -> bytes:
    return draw(junk_fields(first_unknown, valid)) if not draw(st.integers(0, 5)) else b""


def packed_fixed(values, width: int) -> bytes:
    fmt = "<u8" if width == 8 else "<u4"
    return np.array(values, dtype=np.uint64).astype(fmt).tobytes()


@st.composite
def count(draw, small: int, limit: int, valid: bool) -> int:
    """Mostly a few; sometimes many, up to the limit (or just past it)."""
    if draw(st.integers(0, 7)):
        return draw(st.integers(0, small))
    top = limit if valid else limit + 2
    return draw(st.sampled_from([limit, top]) | st.integers(0, top))


@st.composite
def history_event(draw, valid: bool, max_actions: int = 6) -> bytes:
    actions = draw(st.lists(GOOD_ACTION if valid else ANY_ACTION, max_size=max_actions))
    if draw(st.booleans()):  # the usual packed encoding
        event = pb.HistoryEvent(
            post_id=draw(U64),
            author_id=draw(U64),
            actions=actions,
            product_surface=mostly(draw, GOOD_SURFACE, ANY_SURFACE, valid),
        ).SerializeToString()
    else:  # unpacked actions, fields in another order
        event = b"".join(tag(3, 0) + varint(a) for a in actions)
        event += tag(4, 0) + varint(mostly(draw, GOOD_SURFACE, ANY_SURFACE, valid))
        event += tag(2, 1) + packed_fixed([draw(U64)], 8) + tag(1, 1) + packed_fixed([draw(U64)], 8)
    return event + maybe_junk(draw, 5, valid)


@st.composite
def candidate(draw, valid: bool) -> bytes:
    c = pb.Candidate(
        post_id=draw(U64),
        author_id=draw(U64),
        product_surface=mostly(draw, GOOD_SURFACE, ANY_SURFACE, valid),
    ).SerializeToString()
    return c + maybe_junk(draw, 4, valid)


@st.composite
def column_lengths(draw, n: int, names: tuple[str, ...], valid: bool) -> dict[str, int]:
    lengths = {"post_ids": n}
    for name in names:
        if valid or draw(st.integers(0, 3)):
            lengths[name] = n
        else:
            lengths[name] = max(0, n + draw(st.integers(-2, 2)))
    return lengths


def values(draw, strategy, length: int) -> list[int]:
    """`length` values: all drawn when few, else a few drawn and repeated (cheap bulk)."""
    if length <= 16:
        return [draw(strategy) for _ in range(length)]
    pattern = [draw(strategy) for _ in range(draw(st.integers(1, 4)))]
    return (pattern * (length // len(pattern) + 1))[:length]


@st.composite
def history_part(draw, valid: bool) -> bytes:
    forms = ["rows", "columns", "rows", "columns", "absent"] + ([] if valid else ["both"] * 2)
    form = draw(st.sampled_from(forms))
    valid = valid or (form == "both" and draw(st.booleans()))  # often the only fault
    out = b""
    if form in ("rows", "both"):
        n = draw(count(8, MAX_HISTORY, valid))
        if n <= 16:
            events = [draw(history_event(valid)) for _ in range(n)]
        else:  # many events: one drawn, repeated; within the action cap when valid
            cap = min(6, MAX_ACTIONS // n) if valid else 6
            events = [draw(history_event(valid, cap))] * n
        out += b"".join(ld(2, e) for e in events)
    if form in ("columns", "both"):
        n = draw(count(8, MAX_HISTORY, valid))
        lengths = draw(column_lengths(n, ("author_ids", "action_masks", "product_surfaces"), valid))
        payload = b""
        for number, name, strategy, width in (
            (1, "post_ids", U64, 8),
            (2, "author_ids", U64, 8),
            (3, "action_masks", GOOD_MASK if valid else ANY_MASK, 4),
            (4, "product_surfaces", GOOD_SURFACE if valid else ANY_SURFACE, 4),
        ):
            column = values(draw, strategy, lengths[name])
            if column or draw(st.booleans()):  # an empty packed field is legal too
                payload += ld(number, packed_fixed(column, width))
        out += ld(5, payload + maybe_junk(draw, 5, valid))
    return out


@st.composite
def candidates_part(draw, valid: bool) -> bytes:
    forms = ["rows", "columns", "rows", "columns", "absent"] + ([] if valid else ["both"] * 2)
    form = draw(st.sampled_from(forms))
    valid = valid or (form == "both" and draw(st.booleans()))  # often the only fault
    out = b""
    if form in ("rows", "both"):
        m = draw(count(12, MAX_CANDIDATES, valid))
        if m <= 16:
            out += b"".join(ld(3, draw(candidate(valid))) for _ in range(m))
        else:
            pattern = [draw(candidate(valid)) for _ in range(draw(st.integers(1, 3)))]
            out += b"".join(ld(3, pattern[i % len(pattern)]) for i in range(m))
    if form in ("columns", "both"):
        m = draw(count(12, MAX_CANDIDATES, valid))
        lengths = draw(column_lengths(m, ("author_ids", "product_surfaces"), valid))
        payload = b""
        for number, name, strategy, width in (
            (1, "post_ids", U64, 8),
            (2, "author_ids", U64, 8),
            (3, "product_surfaces", GOOD_SURFACE if valid else ANY_SURFACE, 4),
        ):
            column = values(draw, strategy, lengths[name])
            if column or draw(st.booleans()):
                payload += ld(number, packed_fixed(column, width))
        out += ld(6, payload + maybe_junk(draw, 4, valid))
    return out


# What a drawn request gets wrong: nothing (twice as often as each other choice), one part,
# or everything at once. One part at a time, because the server names only the first field
# it finds wrong, and history fields come first.
FAULTS = ["none", "none", "request_id", "history", "candidates", "encoding", "everything"]


@st.composite
def rank_requests(draw, valid: bool = False) -> bytes:
    """A RankRequest encoded by hand, its parts in a drawn order; `valid` forces every
    field within the contract (unknown fields included: they are valid)."""
    fault = "none" if valid else draw(st.sampled_from(FAULTS))

    def ok(part: str) -> bool:
        return fault not in (part, "everything")

    user_id = draw(U64)
    parts = [
        tag(1, 1) + packed_fixed([user_id], 8) if user_id or draw(st.booleans()) else b"",
        draw(history_part(ok("history"))),
        draw(candidates_part(ok("candidates"))),
    ]
    request_id = mostly(draw, GOOD_REQUEST_ID, BAD_REQUEST_ID, ok("request_id"))
    if request_id:
        parts.append(ld(4, request_id.encode()))
    if not ok("encoding") and draw(st.booleans()):  # a request id that is not UTF-8
        parts.append(ld(4, draw(st.binary(max_size=8)) + b"\xff\xfe"))
    order = draw(st.permutations(range(len(parts))))
    data = b"".join(parts[i] for i in order) + maybe_junk(draw, 7, ok("encoding"))
    if draw(st.integers(0, 15)) == 0:  # padded past the inline-decoding size, or the limit
        sizes = [17 * 1024, MAX_BYTES] + ([] if ok("encoding") else [MAX_BYTES + 1])
        data = padded(data, draw(st.sampled_from(sizes)))
    return data


def padded(data: bytes, size: int) -> bytes:
    """`data` and an unknown field 99 of zeros, `size` bytes in all (if it fits)."""
    filler = size - len(data) - 2 - 3
    while filler >= 0 and len(data) + 2 + len(varint(filler)) + filler < size:
        filler += 1
    return data + ld(99, bytes(filler)) if filler >= 0 else data


@st.composite
def mutated_requests(draw) -> bytes:
    data = bytearray(draw(rank_requests(valid=True)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "set", "flip", "delete", "insert", "dup", "splice"]))
        i = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[i:]
        elif op == "set" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "flip" and i < len(data):
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 64)))
            data[j:j] = data[i:j]
        elif op == "splice":  # junk in front or behind: unknown fields or garbage
            junk = draw(junk_fields(7, valid=False) | st.binary(min_size=1, max_size=12))
            data = bytearray(junk) + data if draw(st.booleans()) else data + bytearray(junk)
    return bytes(data)


# A columnar history of one event, valid but for its mask's bit 19 (Action 20).
ONE_EVENT_WITH_BIT_19 = ld(
    5,
    ld(1, packed_fixed([7], 8))
    + ld(2, packed_fixed([8], 8))
    + ld(3, packed_fixed([1 << NUM_ACTIONS | 1], 4))
    + ld(4, packed_fixed([3], 4)),
)

RAW_BYTES = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=2048),
    st.tuples(st.binary(min_size=1, max_size=16), st.integers(1, TRANSPORT_BYTES // 16)).map(
        lambda t: (t[0] * t[1])[:TRANSPORT_BYTES]
    ),
)


# --- the fuzz tests -----------------------------------------------------------------------


@fuzz_settings("raw")
@given(data=RAW_BYTES)
@example(data=b"")  # the empty request: valid, no candidates, an empty response
@example(data=b"\x00")  # field number 0
@example(data=b"\x0f")  # wire type 7
@example(data=b"\x22\x80\x80\x80\x80\x10")  # a length past the end
@example(data=b"\x2a\x00\x32\x00")  # both column messages present and empty
@example(data=b"\x00" * (MAX_BYTES + 1))  # over the service's limit, under gRPC's
@example(data=b"\x0b" * 200)  # unterminated groups
def test_rank_survives_arbitrary_bytes(fuzzed, data):
    check_rank(fuzzed, data)


@fuzz_settings("structured")
@given(data=rank_requests())
@example(data=ld(4, "é".encode() * 64))  # 128 bytes, 64 characters: at the limit
@example(data=ld(4, "é".encode() * 65))  # 129 bytes in 65 characters: over it
@example(data=ld(4, b"line\nbreak\r\n\x00\x1b"))
@example(data=ld(2, tag(3, 0) + varint(-1)))  # a negative action, unpacked
@example(data=ld(2, ld(3, b"\x01\x01\x13")) + ld(3, b""))  # duplicate actions
@example(data=ld(6, ld(1, packed_fixed([2**64 - 1], 8))))  # columns of mismatched lengths
@example(data=ld(5, ld(3, packed_fixed([1 << 19], 4))))  # more masks than post ids
@example(data=ONE_EVENT_WITH_BIT_19)  # the first bit too high, alone
@example(data=ld(3, b"") * (MAX_CANDIDATES + 1))
@example(data=ld(2, b"") + ld(5, b""))  # one history event in each form
@example(data=ld(3, b"") + ld(6, b""))  # one candidate in each form
def test_rank_answers_structured_requests_by_the_contract(fuzzed, data):
    check_rank(fuzzed, data)


@fuzz_settings("mutated")
@given(data=mutated_requests())
def test_rank_answers_mutated_requests_by_the_contract(fuzzed, data):
    check_rank(fuzzed, data)


@fuzz_settings("model_info")
@given(
    data=st.one_of(
        st.binary(max_size=64),
        junk_fields(1, valid=True),  # unknown fields: a valid GetModelInfoRequest
        st.binary(max_size=8).map(lambda b: ld(1, b)),
    )
)
@example(data=b"")
@example(data=b"\xff\xff\xff")  # does not parse
def test_get_model_info_answers_arbitrary_bytes(fuzzed, data):
    try:
        pb.GetModelInfoRequest.FromString(data)
        parses = True
    except DecodeError:
        parses = False
    code, body = fuzzed.call_model_info(data)
    event(f"{code.name}")
    if parses:
        assert code == grpc.StatusCode.OK, f"GetModelInfo answered {code.name}: {body!r}"
        assert pb.ModelInfo.FromString(body) == fuzzed.info
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (
            f"GetModelInfo answered {code.name} for bytes that are not a "
            f"GetModelInfoRequest: {body!r}"
        )
        assert body.startswith("request: "), body


def xai_valid(seed: int, form: str) -> xpb.PredictNextActionsRequest:
    raw = random_request(np.random.default_rng(seed), seed % 7, 1 + seed % 5)
    raw = xai_forms.expressible(raw, one_action=form in xai_forms.ONE_ACTION_FORMS)
    return xai_forms.request([raw], form)


@st.composite
def xai_requests(draw) -> bytes:
    """A valid PredictNextActions request, mutated; or one whose Arrow stream or zstd frame
    is arbitrary bytes or a mutation of a valid one."""
    form = draw(st.sampled_from(xai_forms.FORMS))
    request = xai_valid(draw(st.integers(0, 1000)), form)
    kind = draw(st.sampled_from(["mutate", "part"]))
    if kind == "part" and form == "columnar_sequences":
        request.columnar_sequences[0] = draw(st.binary(max_size=300) | mutated(
            request.columnar_sequences[0]))  # fmt: skip
    elif kind == "part" and form == "compressedUserActions":
        compressed = request.sequences[0].userActionsData.compressedUserActions
        compressed.data = draw(st.binary(max_size=300) | mutated(compressed.data))
    return (
        draw(mutated(request.SerializeToString()))
        if kind == "mutate"
        else (request.SerializeToString())
    )


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with one truncation, byte change or insertion."""
    return st.tuples(st.integers(0, len(data)), st.integers(0, 2), st.binary(min_size=1,
                                                                              max_size=4)).map(
        lambda t: (data[: t[0]], data[: t[0]] + t[2] + data[t[0] + 1 :],
                   data[: t[0]] + t[2] + data[t[0] :])[t[1]]
    )  # fmt: skip


XAI_FIELDS = re.compile(r"(request|metadata|candidateSets|sequences|columnar_sequences)\b")


@fuzz_settings("xai")
@given(data=st.one_of(RAW_BYTES, xai_requests()))
@example(data=b"")  # no candidate set
@example(data=xai_valid(3, "columnar_sequences").SerializeToString())
def test_predict_answers_by_the_contract(fuzzed, data):
    code, body = fuzzed.call_predict(data)
    event(code.name)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, body)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert XAI_FIELDS.match(body), body
        return
    request = xpb.PredictNextActionsRequest.FromString(data)
    response = xpb.PredictNextActionsResponse.FromString(body)
    assert len(response.distributionSets) == len(request.candidateSets)
    for dist_set, sent in zip(response.distributionSets, request.candidateSets, strict=True):
        assert len(dist_set.candidateDistributions) == len(sent.candidates)
        for dist in dist_set.candidateDistributions:
            top = np.array(dist.topLogProbs if request.returnLogprob else dist.logits)
            assert not np.isnan(top).any() and (not request.returnLogprob or (top <= 0).all())


HOSTILE_LIMITS = Limits(max_candidates_per_request=MAX_CANDIDATES, max_history_events=MAX_HISTORY,
                        max_history_actions=MAX_ACTIONS, max_request_bytes=MAX_BYTES)  # fmt: skip


def test_the_hostile_corpus_is_answered_with_its_codes(fuzzed):
    for case in hostile.cases(HOSTILE_LIMITS):
        if len(case.data) > TRANSPORT_BYTES:
            continue  # gRPC refuses it (RESOURCE_EXHAUSTED) before the service counts a call
        call = fuzzed.call_predict if case.method == hostile.PREDICT else fuzzed.call_rank
        start = time.monotonic()
        code, body = call(case.data)
        assert code.name in case.codes, (case.name, code, body)
        assert time.monotonic() - start < 5, case.name  # an idle server: far less


def test_the_server_survived_the_fuzz(fuzzed):
    """Last in the module: the server is alive and unchanged, and counted every call."""
    server = fuzzed.server
    assert server.proc.poll() is None, server.log()[-5000:]
    after = reference_logits(fuzzed)
    np.testing.assert_array_equal(after.view(np.uint32), fuzzed.reference.view(np.uint32))
    # Every call counted under the code its client saw. The server counts a call just after
    # the client has its status: poll (bounded).
    deadline = time.monotonic() + 10
    while (counted := fuzzed.counted_since_start()) != fuzzed.codes:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    made = {method: sum(codes.values()) for method, codes in fuzzed.codes.items()}
    assert sum(counted["Rank"].values()) >= made["Rank"], (counted, fuzzed.codes)
    assert counted == fuzzed.codes, (counted, fuzzed.codes)
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    errors = [e for e in server.events() if e.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
