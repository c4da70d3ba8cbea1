"""The action vocabulary: what the model predicts for every candidate.

The 19 engagement actions of X's open-sourced Phoenix release, in output order. Logit `a` of a
candidate is the model's log-odds that the user takes action `ACTIONS[a]` on it (multi-label:
probabilities are `sigmoid(logits)`, not a softmax). History events carry a multi-hot vector over
the same vocabulary.
"""

from __future__ import annotations

ACTIONS: tuple[str, ...] = (
    "favorite",
    "reply",
    "repost",
    "photo_expand",
    "click",
    "profile_click",
    "video_quality_view",
    "share",
    "share_via_dm",
    "share_via_copy_link",
    "dwell",
    "quote",
    "quoted_click",
    "follow_author",
    "not_interested",
    "block_author",
    "mute_author",
    "report",
    "dwell_time",
)

NUM_ACTIONS = len(ACTIONS)

ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}

# Actions a user takes on content they do not want; the home-mixer weights them negatively.
NEGATIVE_ACTIONS: frozenset[str] = frozenset(
    {"not_interested", "block_author", "mute_author", "report"}
)


def action_index(name: str) -> int:
    """Index of an action name in `ACTIONS`; ValueError naming the action if unknown."""
    try:
        return ACTION_INDEX[name]
    except KeyError:
        raise ValueError(f"unknown action {name!r}; known: {', '.join(ACTIONS)}") from None
