"""The cross-request prefix cache: LRU policy, keys, and what a hit means end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model import load_checkpoint
from model.checkpoint import default_checkpoint_path
from request.encoding import encode
from request.layout import Piece, windows
from server.contracts.convert import logits_from_pb, raw_request_to_pb
from server.engine.prefix_cache import PrefixCache, prefix_key
from server.engine.runner import ModelRunner
from tests.helpers import random_request, runner_config, with_candidates
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

# -- the policy ---------------------------------------------------------------------------


def test_least_recently_used_unpinned_entry_is_evicted():
    cache = PrefixCache(slots=2, slot_bytes=10)
    a, hit_a = cache.acquire("a")
    b, _ = cache.acquire("b")
    assert not hit_a and {a.slot, b.slot} == {0, 1}
    cache.release([a, b])
    again, hit = cache.acquire("a")  # "a" is now the most recently used
    assert hit and again is a
    cache.release([again])
    c, hit_c = cache.acquire("c")
    assert not hit_c and c.slot == b.slot  # "b" was the least recently used
    assert cache.stats() == (1, 3, 1, 2, 20)


def test_pinned_entries_are_never_evicted():
    cache = PrefixCache(slots=2, slot_bytes=1)
    a, _ = cache.acquire("a")
    b, _ = cache.acquire("b")
    with pytest.raises(RuntimeError, match="pinned"):
        cache.acquire("c")
    cache.release([b])
    c, _ = cache.acquire("c")
    assert c.slot == b.slot and cache.acquire("a")[1]  # "a" stayed


def test_forget_keeps_pinned_slots_unwritten_and_frees_the_rest():
    cache = PrefixCache(slots=3, slot_bytes=1)
    a, _ = cache.acquire("a")
    b, _ = cache.acquire("b")
    cache.written([a, b])
    cache.release([b])
    cache.forget()
    assert cache.unwritten([a]) == [a]  # still pinned: its batch encodes it again
    assert not cache.acquire("b")[1]  # dropped
    assert cache.acquire("a")[1]


def test_the_key_is_the_version_and_the_exact_user_and_history_window():
    ckpt = load_checkpoint(default_checkpoint_path())
    rng = np.random.default_rng(0)
    raw = random_request(rng, history=20, candidates=5)
    key = prefix_key("v1", encode(raw, ckpt.config, ckpt.rows))
    other_candidates = with_candidates(random_request(rng, 20, 9), [0, 1])
    other_candidates = dataclasses.replace(raw, candidate_post_ids=other_candidates.candidate_post_ids,
                                           candidate_author_ids=other_candidates.candidate_author_ids,
                                           candidate_surface=other_candidates.candidate_surface)  # fmt: skip
    assert prefix_key("v1", encode(other_candidates, ckpt.config, ckpt.rows)) == key
    assert prefix_key("v2", encode(raw, ckpt.config, ckpt.rows)) != key
    actions = raw.history_actions.copy()
    actions[-1, 0] ^= 1  # one action of the newest event
    changed = dataclasses.replace(raw, history_actions=actions)
    assert prefix_key("v1", encode(changed, ckpt.config, ckpt.rows)) != key
    shorter = dataclasses.replace(raw, **{f: getattr(raw, f)[1:] for f in (
        "history_post_ids", "history_author_ids", "history_actions", "history_surface")})  # fmt: skip
    assert prefix_key("v1", encode(shorter, ckpt.config, ckpt.rows)) != key


# -- the runner, on the real forward pass ---------------------------------------------------


@pytest.fixture(scope="module")
def runner():
    ckpt = load_checkpoint(default_checkpoint_path())
    runner = ModelRunner(ckpt, runner_config(4, (8, 32), prefix_cache_bytes=1 << 20))
    runner.warmup()
    return runner


def score(runner, raw):
    """A request scored batch by batch, one chunk each: ([m, 2A] scores, prefix calls run)."""
    encoded = encode(raw, runner.config, runner.model.checkpoint.rows)
    out, prefix_calls = [], 0
    for start, stop in windows(encoded.num_candidates, 8):
        packed = runner.pack([Piece(encoded, start, stop)])
        prefix_calls += len(packed.prefix_calls)
        out.append(runner.run(packed).values[0, : stop - start])
    return np.concatenate(out), prefix_calls


def test_a_hit_skips_the_prefix_pass_and_gives_bit_identical_scores(runner):
    raw = random_request(np.random.default_rng(1), history=40, candidates=20)
    before = runner.prefix_cache_stats()
    miss, calls_miss = score(runner, raw)
    hit, calls_hit = score(runner, raw)
    after = runner.prefix_cache_stats()
    assert calls_miss == 1  # three chunks, one prefix pass: the later chunks hit
    assert calls_hit == 0
    np.testing.assert_array_equal(hit, miss)
    assert after.misses - before.misses == 1 and after.hits - before.hits == 5


def test_a_new_version_never_reads_a_prefix_the_old_one_encoded(runner):
    raw = random_request(np.random.default_rng(2), history=30, candidates=8)
    old, _ = score(runner, raw)
    ckpt = runner.model.checkpoint
    scaled = {k: {n: a * 1.5 if n == "w" else a for n, a in v.items()}
              for k, v in ckpt.state.params.items()}  # fmt: skip
    new_ckpt = dataclasses.replace(ckpt, state=ckpt.state._replace(params=scaled))
    previous = runner.versions.swap(runner.versions.prepare(new_ckpt, "v-new"))
    try:
        new, calls = score(runner, raw)
        assert calls == 1  # a miss under the new version's key
        assert not np.allclose(new, old)
        fresh = ModelRunner(new_ckpt, runner_config(4, (8, 32)))
        fresh.warmup()
        np.testing.assert_allclose(new, score(fresh, raw)[0], atol=1e-5, rtol=1e-5)
    finally:
        runner.versions.swap(previous)


def test_a_failed_batch_leaves_no_stale_prefix(runner, monkeypatch):
    """A batch whose call fails loses its slab; a batch packed after it (reading the prefix
    the failed one was to encode) encodes it itself, and scores stay exact."""
    raw = random_request(np.random.default_rng(3), history=50, candidates=16)
    expected, _ = score(runner, raw)
    raw2 = random_request(np.random.default_rng(4), history=50, candidates=16)
    encoded = encode(raw2, runner.config, runner.model.checkpoint.rows)
    first = runner.pack([Piece(encoded, 0, 8)])
    second = runner.pack([Piece(encoded, 8, 16)])  # hits the prefix `first` is to encode
    assert first.prefix_calls and not second.prefix_calls
    real = runner.engine.executable

    def broken(shape):
        if shape.is_prefix:
            raise RuntimeError("device lost")
        return real(shape)

    monkeypatch.setattr(runner.engine, "executable", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        runner.run(first)
    monkeypatch.setattr(runner.engine, "executable", real)
    got = runner.run(second).values[0, :8]
    want = score(ModelRunnerFor(runner), raw2)[0][8:16]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(score(runner, raw)[0], expected)  # others unharmed


def ModelRunnerFor(runner):  # noqa: N802 (a factory that reads like the class)
    fresh = ModelRunner(runner.model.checkpoint, runner_config(4, (8, 32)))
    fresh.warmup()
    return fresh


# -- served ---------------------------------------------------------------------------------


def test_served_hits_are_counted_and_exact_and_reuse_can_be_turned_off(compilation_cache):
    rng = np.random.default_rng(5)
    raw = random_request(rng, history=60, candidates=40)
    page2 = with_candidates(raw, np.arange(39, -1, -1))  # the same user and history
    for cache_bytes, cross_request_hits in (("16777216", 1), ("0", 0)):
        with ServerProcess(*SMALL_PLAN, "--prefix-cache-bytes", cache_bytes,
                           env=compilation_cache) as server:  # fmt: skip
            first = logits_from_pb(server.client.rank(raw_request_to_pb(raw)))
            m0 = server.metrics()
            second = logits_from_pb(server.client.rank(raw_request_to_pb(page2)))
            m1 = server.metrics()
            np.testing.assert_array_equal(second, first[::-1])  # bit-identical, any order
            assert m1["phoenix_prefix_cache_misses_total"] - m0[
                "phoenix_prefix_cache_misses_total"] == 1 - cross_request_hits  # fmt: skip
            assert m1["phoenix_prefix_cache_entries"] >= 1
            assert m1["phoenix_prefix_cache_bytes"] <= m1["phoenix_prefix_cache_capacity_bytes"]
