"""From per-action probabilities to one ranking score, as X's home-mixer does.

The home-mixer ranks by a weighted sum of the model's action probabilities: positive weights
for engagement, negative ones for the actions that say "show me less of this". Our defaults
follow the proportions of the weights X published for its 2023 heavy ranker (a reply or a
profile click worth ~25x a favorite, a report strongly negative); tune them per product. The
Rust client crate states the same defaults (`Weights::default`); a test holds them equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from request.actions import ACTIONS

DEFAULT_WEIGHTS: dict[str, float] = {
    "favorite": 0.5,
    "reply": 13.5,
    "repost": 1.0,
    "photo_expand": 0.1,
    "click": 11.0,
    "profile_click": 12.0,
    "video_quality_view": 0.005,
    "share": 1.0,
    "share_via_dm": 1.0,
    "share_via_copy_link": 1.0,
    "dwell": 0.1,
    "quote": 1.0,
    "quoted_click": 0.5,
    "follow_author": 4.0,
    "not_interested": -74.0,
    "block_author": -74.0,
    "mute_author": -74.0,
    "report": -369.0,
    "dwell_time": 0.1,
}


def parse_weights(text: str) -> dict[str, float]:
    """'favorite=1,report=-100' -> the defaults with those weights replaced."""
    weights = dict(DEFAULT_WEIGHTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in weights:
            raise ValueError(f"unknown action {name!r} in weights; known: {', '.join(ACTIONS)}")
        weights[name] = float(value)
    return weights


def weighted_scores(
    probabilities: np.ndarray,
    actions: Sequence[str] = ACTIONS,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
) -> np.ndarray:
    """probabilities [m, A] whose columns are named by `actions` -> scores [m].

    Columns are matched by name, never by position; actions without a weight count 0.
    """
    w = np.array([weights.get(name, 0.0) for name in actions], dtype=np.float64)
    return np.asarray(probabilities, dtype=np.float64) @ w


def format_ranking(
    post_ids: Sequence[int],
    author_ids: Sequence[int],
    probabilities: np.ndarray,
    actions: Sequence[str] = ACTIONS,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    columns: Sequence[str] = ("favorite", "reply", "repost", "click", "not_interested", "report"),
    top: int | None = None,
) -> str:
    """A table of candidates sorted by weighted score, best first."""
    scores = weighted_scores(probabilities, actions, weights)
    order = np.argsort(-scores, kind="stable")[:top]
    index = {name: i for i, name in enumerate(actions)}
    header = f"{'rank':>4}  {'post_id':>20}  {'author_id':>20}  {'score':>8}" + "".join(
        f"  {name[:14]:>14}" for name in columns
    )
    lines = [header, "-" * len(header)]
    for rank, i in enumerate(order, 1):
        probs = "".join(f"  {probabilities[i, index[name]]:>14.4f}" for name in columns)
        lines.append(
            f"{rank:>4}  {int(post_ids[i]):>20}  {int(author_ids[i]):>20}  {scores[i]:>8.3f}{probs}"
        )
    return "\n".join(lines)
