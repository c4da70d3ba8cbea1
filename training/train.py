"""Training on the synthetic world: per-action sigmoid cross-entropy with optax AdamW.

Glossary: B batch rows, C candidates, A actions. Every candidate of every request is a labelled
example for each of the 19 actions (multi-label), so the loss is the mean over B * C * A binary
cross-entropies of the logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from model.config import PhoenixModelConfig
from model.network import make_forward
from request.hashing import TableRows
from training.world import Dataset, World

TRAIN_STREAM, EVAL_STREAM = 1, 2  # sample() seeds of the training and held-out requests


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # parameter init and minibatch order
    steps: int = 6000
    batch_size: int = 64  # requests per step
    learning_rate: float = 3e-3  # peak, after linear warm-up; cosine decay to 5% after
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    train_requests: int = 20000
    eval_requests: int = 2000

    def to_dict(self) -> dict:
        return asdict(self)


def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of logits [B, C, A] against 0/1 labels [B, C, A]."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))


def datasets(
    world: World, config: PhoenixModelConfig, train: TrainConfig
) -> tuple[Dataset, Dataset]:
    """The training and held-out requests (different sample streams of the same world)."""
    s, c = config.history_seq_len, config.candidate_seq_len
    return (
        world.sample(train.train_requests, s, c, seed=TRAIN_STREAM),
        world.sample(train.eval_requests, s, c, seed=EVAL_STREAM),
    )


def train(
    config: PhoenixModelConfig,
    rows: TableRows,
    data: Dataset,
    train_config: TrainConfig,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> tuple[dict, list[float]]:
    """Train from scratch; returns (params, mean loss of each logged interval)."""
    t = train_config
    forward = make_forward(config, rows, jnp.float32)
    rng = np.random.default_rng(t.seed)
    first = data.batch(config, rows, np.arange(min(t.batch_size, len(data))))
    params = forward.init(jax.random.PRNGKey(t.seed), first)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        t.learning_rate,
        t.warmup_steps,
        max(t.steps, t.warmup_steps + 1),
        t.learning_rate * 0.05,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=t.weight_decay)
    )
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch, labels):
        loss, grads = jax.value_and_grad(
            lambda p: sigmoid_cross_entropy(forward.apply(p, batch), labels)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, interval, start = [], [], time.time()
    for i in range(t.steps):
        index = rng.integers(0, len(data), size=t.batch_size)
        params, opt_state, loss = step(
            params, opt_state, data.batch(config, rows, index), data.labels[index]
        )
        interval.append(loss)
        if (i + 1) % log_every == 0 or i + 1 == t.steps:
            losses.append(float(np.mean(jax.device_get(interval))))
            interval = []
            log(f"step {i + 1}/{t.steps}  loss {losses[-1]:.4f}  ({time.time() - start:.0f}s)")
    return jax.device_get(params), losses
