"""A deterministic synthetic engagement world to train and evaluate the default model on.

Glossary: N requests, S history slots, C candidates, A actions, L latent dimension.

Users have latent interests and authors latent topics (unit vectors in R^L); a post is its
author's topic plus noise, and has a quality. The ground truth of action `a` for a user and a
post shown on a product surface is

    p_a = sigmoid(bias_a + sign_a * affinity_a * <user, post> + quality_a * quality + surface_{s,a})

with `sign_a = +1` for engagement and `-1` for the negative actions (not_interested, block,
mute, report: driven by mismatch). Histories are a user's past impressions with the actions
they took, sampled from the same truth; labels of candidates likewise. A non-personalised
model (per-post popularity) can learn quality and author averages but not `<user, post>`, so
the gap between it and the transformer measures personalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from model.config import PhoenixModelConfig
from request.actions import ACTIONS, NEGATIVE_ACTIONS, NUM_ACTIONS
from request.columns import SCHEMA
from request.encoding import model_inputs
from request.features import FEATURES, Part, of_part
from request.hashing import TableRows
from request.layout import RankingBatch
from request.raw import RawRequest

# Per-action base rate (logit) and strength of the user-post affinity; rarer actions first.
_ACTION_BIAS = {
    "favorite": -1.2, "reply": -3.0, "repost": -2.6, "photo_expand": -2.2, "click": -0.8,
    "profile_click": -2.8, "video_quality_view": -1.8, "share": -3.2, "share_via_dm": -3.6,
    "share_via_copy_link": -3.8, "dwell": -0.3, "quote": -3.8, "quoted_click": -3.4,
    "follow_author": -3.6, "not_interested": -2.8, "block_author": -4.2, "mute_author": -4.0,
    "report": -4.6, "dwell_time": -0.9,
}  # fmt: skip
_ACTION_AFFINITY = {"favorite": 4.0, "click": 3.0, "dwell": 3.0, "dwell_time": 3.5}
_DEFAULT_AFFINITY = 3.5


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic population. Everything derives from `seed`."""

    seed: int = 0
    num_users: int = 2000
    num_authors: int = 300
    num_posts: int = 8000
    latent_dim: int = 4
    post_noise: float = 0.6  # post vector = normalise(author topic + post_noise * noise)
    quality_scale: float = 0.6  # std of post quality
    surface_scale: float = 0.3  # std of per-surface, per-action offsets
    product_surface_vocab_size: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _unique_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct nonzero uint64 ids spread over the whole 64-bit range."""
    ids = np.unique(rng.integers(1, 2**64 - 1, size=2 * n, dtype=np.uint64, endpoint=True))
    return rng.permutation(ids)[:n]


@dataclass(frozen=True, eq=False)
class Dataset:
    """N synthetic requests with labels: every feature of a request (`request.features`) as
    [N] (the user's), [N, S, ...] (history; slots past `history_len` are padding) or
    [N, C, ...] (candidates)."""

    features: dict[str, np.ndarray]  # RawRequest field -> its values over the dataset
    history_len: np.ndarray  # int32 [N]
    candidate_post_index: np.ndarray  # int64 [N, C], index of the post in the world
    labels: np.ndarray  # uint8 [N, C, A]
    probabilities: np.ndarray  # float32 [N, C, A], the ground truth the labels were drawn from

    def __len__(self) -> int:
        return len(self.history_len)

    def request(self, i: int) -> RawRequest:
        n = int(self.history_len[i])
        fields = {}
        for f in FEATURES:
            values = self.features[f.name][i]
            if f.part is Part.USER:
                values = int(values)
            elif f.part is Part.HISTORY:
                values = values[:n]
            fields[f.name] = values
        return RawRequest(**fields, request_id=f"synthetic-{i}")

    def batch(self, config: PhoenixModelConfig, rows: TableRows, index: np.ndarray) -> RankingBatch:
        """Rows `index` hashed into a full-size numpy batch [len(index), S, C] (the same
        hashing as serving: `request.encoding.model_inputs`), history padding zeroed."""
        inputs = model_inputs({k: v[index] for k, v in self.features.items()}, config, rows)
        slots = self.features[of_part(Part.HISTORY)[0].name].shape[1]
        padding = np.arange(slots)[None, :] >= self.history_len[index, None]  # [B, S]
        for c in SCHEMA.columns:
            if c.part is Part.HISTORY:
                inputs[c.name][padding] = 0
        return RankingBatch(**inputs)


class World:
    """Users, authors, posts and the ground-truth action probabilities."""

    def __init__(self, config: WorldConfig):
        self.config = c = config
        rng = np.random.default_rng(c.seed)
        self.user_ids = _unique_ids(rng, c.num_users)
        self.author_ids = _unique_ids(rng, c.num_authors)
        self.post_ids = _unique_ids(rng, c.num_posts)
        self.user_vec = _unit(rng.normal(size=(c.num_users, c.latent_dim)))  # [U, L]
        author_vec = _unit(rng.normal(size=(c.num_authors, c.latent_dim)))  # [Au, L]
        self.post_author = rng.integers(0, c.num_authors, size=c.num_posts)  # [P]
        noise = rng.normal(size=(c.num_posts, c.latent_dim))
        self.post_vec = _unit(author_vec[self.post_author] + c.post_noise * noise)  # [P, L]
        self.post_quality = c.quality_scale * rng.normal(size=c.num_posts)  # [P]
        self.surface_offset = c.surface_scale * rng.normal(
            size=(c.product_surface_vocab_size, NUM_ACTIONS)
        )  # [V, A]
        self.bias = np.array([_ACTION_BIAS[a] for a in ACTIONS])  # [A]
        sign = np.array([-1.0 if a in NEGATIVE_ACTIONS else 1.0 for a in ACTIONS])
        self.affinity = sign * np.array(
            [_ACTION_AFFINITY.get(a, _DEFAULT_AFFINITY) for a in ACTIONS]
        )
        # Negative actions also come more with low-quality posts.
        self.quality = sign * 1.0  # [A]

    def probabilities(
        self, users: np.ndarray, posts: np.ndarray, surfaces: np.ndarray
    ) -> np.ndarray:
        """Ground truth for broadcastable index arrays [...] -> float32 [..., A]."""
        affinity = np.einsum("...l,...l->...", self.user_vec[users], self.post_vec[posts])
        logits = (
            self.bias
            + self.affinity * affinity[..., None]
            + self.quality * self.post_quality[posts][..., None]
            + self.surface_offset[surfaces]
        )
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def sample(
        self, num_requests: int, history_seq_len: int, num_candidates: int, seed: int
    ) -> Dataset:
        """`num_requests` requests; history lengths cover 0..S, most histories are full."""
        c = self.config
        rng = np.random.default_rng([c.seed, seed])
        n, s, m = num_requests, history_seq_len, num_candidates
        users = rng.integers(0, c.num_users, size=n)
        full = rng.random(n) < 0.7
        history_len = np.where(full, s, rng.integers(0, s + 1, size=n)).astype(np.int32)

        hist_posts = rng.integers(0, c.num_posts, size=(n, s))
        hist_surface = rng.integers(0, c.product_surface_vocab_size, size=(n, s))
        hist_p = self.probabilities(users[:, None], hist_posts, hist_surface)
        hist_actions = (rng.random(hist_p.shape) < hist_p).astype(np.uint8)

        cand_posts = rng.integers(0, c.num_posts, size=(n, m))
        cand_surface = rng.integers(0, c.product_surface_vocab_size, size=(n, m))
        cand_p = self.probabilities(users[:, None], cand_posts, cand_surface)
        labels = (rng.random(cand_p.shape) < cand_p).astype(np.uint8)
        modelled = {
            "user_id": self.user_ids[users],
            "history_post_ids": self.post_ids[hist_posts],
            "history_author_ids": self.author_ids[self.post_author[hist_posts]],
            "history_actions": hist_actions,
            "history_surface": hist_surface,
            "candidate_post_ids": self.post_ids[cand_posts],
            "candidate_author_ids": self.author_ids[self.post_author[cand_posts]],
            "candidate_surface": cand_surface,
        }
        # A feature the world does not model takes its default everywhere.
        lead = {Part.USER: (n,), Part.HISTORY: (n, s), Part.CANDIDATE: (n, m)}
        features = {f.name: modelled[f.name] if f.name in modelled
                    else np.zeros((*lead[f.part], *f.row_shape), f.dtype) for f in FEATURES}  # fmt: skip
        return Dataset(features, history_len, cand_posts, labels, cand_p)
