"""The trainer learns, and the committed default model is what its manifest says it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import (
    HashConfig,
    PhoenixModelConfig,
    Ranker,
    TransformerConfig,
    load_checkpoint,
)
from model.checkpoint import default_checkpoint_path
from request.hashing import TableRows
from training.evaluate import evaluate, popularity_table, roc_auc
from training.manifest import manifest_path
from training.train import TrainConfig, datasets, train
from training.world import World, WorldConfig


def test_roc_auc_against_hand_computed_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: pairs won 1 + 2 of 4
    assert roc_auc([0, 1, 0, 1], [0.1, 0.35, 0.4, 0.8]) == 0.75
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_synthetic_world_is_deterministic():
    a = World(WorldConfig(seed=3, num_users=50, num_posts=200)).sample(5, 8, 4, seed=1)
    b = World(WorldConfig(seed=3, num_users=50, num_posts=200)).sample(5, 8, 4, seed=1)
    np.testing.assert_array_equal(
        a.features["candidate_post_ids"], b.features["candidate_post_ids"]
    )
    np.testing.assert_array_equal(a.labels, b.labels)


def test_a_few_steps_reduce_the_loss():
    config = PhoenixModelConfig(
        model=TransformerConfig(emb_size=16, key_size=8, num_q_heads=2, num_kv_heads=1, num_layers=1,
                                widening_factor=2.0, attn_output_multiplier=8**-0.5),
        emb_size=16, history_seq_len=8, candidate_seq_len=8, hash_config=HashConfig(),
    )  # fmt: skip
    world = World(WorldConfig(num_users=100, num_authors=20, num_posts=300))
    train_config = TrainConfig(
        steps=40, batch_size=16, warmup_steps=5, train_requests=400, eval_requests=50
    )
    data, _ = datasets(world, config, train_config)
    _, losses = train(
        config, TableRows(127, 509, 61), data, train_config, log=lambda _: None, log_every=10
    )
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_committed_default_reproduces_its_recorded_auc():
    path = default_checkpoint_path()
    assert path.stat().st_size <= 20 * 2**20
    manifest = json.loads(manifest_path(path).read_text())
    ckpt = load_checkpoint(path)
    assert ckpt.info.file_sha256 == manifest["checkpoint_sha256"]
    assert ckpt.config.candidates_isolated_across_windows

    world = World(WorldConfig(**manifest["world"]))
    train_data, held_out = datasets(world, ckpt.config, TrainConfig(**manifest["train"]))
    results = {r.action: r for r in evaluate(Ranker(ckpt.state.params, ckpt.config), held_out,
                                             popularity_table(train_data, world.config.num_posts))}  # fmt: skip
    for action, recorded in manifest["eval"]["auc"].items():
        assert results[action].model == pytest.approx(recorded["model"], abs=2e-3), action
        assert results[action].baseline == pytest.approx(recorded["baseline"], abs=1e-9), action
    favorite = results["favorite"]
    assert favorite.model >= 0.75
    assert favorite.model >= favorite.baseline + 0.1
