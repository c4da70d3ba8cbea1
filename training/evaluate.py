"""Held-out evaluation: per-action ROC-AUC of the model beside a non-personalised baseline.

Glossary: N requests, C candidates, A actions, P posts in the world.

The baseline scores a candidate by its post's smoothed engagement rate in the training requests
(falling back to the action's global rate for posts never shown there): what a popularity
ranker knows without looking at the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.ranker import Ranker
from request.actions import ACTIONS
from training.world import Dataset


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(labels.size, dtype=np.float64)
    # Average rank (1-based) within each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], labels.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def popularity_table(train: Dataset, num_posts: int, prior: float = 20.0) -> np.ndarray:
    """Smoothed per-post action rates from the training requests: float64 [P, A]."""
    posts = train.candidate_post_index.reshape(-1)
    labels = train.labels.reshape(-1, train.labels.shape[-1]).astype(np.float64)
    counts = np.zeros((num_posts, labels.shape[1]))
    np.add.at(counts, posts, labels)
    shown = np.bincount(posts, minlength=num_posts)[:, None]
    global_rate = labels.mean(axis=0)
    return (counts + prior * global_rate) / (shown + prior)


@dataclass(frozen=True)
class ActionAUC:
    action: str
    model: float
    baseline: float
    positives: int


def model_scores(ranker: Ranker, data: Dataset, chunk: int = 256) -> np.ndarray:
    """Logits of every held-out candidate through the offline ranker: float32 [N, C, A]."""
    out = []
    for start in range(0, len(data), chunk):
        requests = [data.request(i) for i in range(start, min(start + chunk, len(data)))]
        out += ranker.logits_many(requests)
    return np.stack(out)


def evaluate(ranker: Ranker, held_out: Dataset, popularity: np.ndarray) -> list[ActionAUC]:
    """Per-action AUC of the model and of the popularity baseline on held-out requests."""
    logits = model_scores(ranker, held_out)
    baseline = popularity[held_out.candidate_post_index]  # [N, C, A]
    return [
        ActionAUC(
            action=name,
            model=roc_auc(held_out.labels[..., a], logits[..., a]),
            baseline=roc_auc(held_out.labels[..., a], baseline[..., a]),
            positives=int(held_out.labels[..., a].sum()),
        )
        for a, name in enumerate(ACTIONS)
    ]


def format_table(rows: list[ActionAUC]) -> str:
    lines = [f"{'action':<22}{'model AUC':>10}{'baseline':>10}{'positives':>11}"]
    lines += [f"{r.action:<22}{r.model:>10.4f}{r.baseline:>10.4f}{r.positives:>11}" for r in rows]
    return "\n".join(lines)
