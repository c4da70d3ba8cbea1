"""Synthetic ranking requests: the one definition that Python and Rust both follow.

The same `(seed, history, candidates, surfaces)` gives the same request here and in the Rust
client crate (`clients/rust/src/synthetic.rs`, printed by `rank --print-request`);
`tests/clients/test_rust_python_parity.py` checks that they agree. Change both or neither.

The specification:

* The generator is SplitMix64 seeded with `seed` (an integer in [0, 2**64)). Each draw adds
  0x9E3779B97F4A7C15 to the 64-bit state, then mixes a copy `z` of the state:
  `z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9`, `z = (z ^ (z >> 27)) * 0x94D049BB133111EB`, and
  returns `z ^ (z >> 31)`, all modulo 2**64. `below(n)` is a draw modulo `n`; `unit()` is a
  draw shifted right by 11 bits and divided by 2**53 (a float in [0, 1), exact in binary64).
* First come the `history` history events, oldest first. For each event, in this order: its
  `post_id` is a draw; its `author_id` is `below(5000)`; its actions are those proto action
  values `a` from 1 to 19 for which `unit() < 0.1`, one `unit()` draw per action value in
  increasing order whether or not it is taken; its `product_surface` is `below(surfaces)`.
* Then come the `candidates` candidates. For each: its `post_id` is a draw, its `author_id` is
  `below(5000)` and its `product_surface` is `below(surfaces)`.
* Then the `user_id` is one more draw, and the `request_id` is `"synthetic-{seed}"`.

`surfaces` is the model's product surface vocabulary size (`ModelInfo.product_surface_vocab_size`).
In the JSON layout (the parity fixture's, which `RawRequest.from_dict` and
`phoenix-ranker rank --request` read) ids are integers and actions are names: action value `a`
is `request.actions.ACTIONS[a - 1]`.

Pure Python: this module imports neither JAX, haiku nor gRPC.
"""

from __future__ import annotations

from typing import Any

from request.actions import ACTIONS

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
AUTHORS = 5000  # author_id is below(AUTHORS)
ACTION_VALUES = range(1, 20)  # proto action values 1..=19, one unit() draw each, in this order
ACTION_PROBABILITY = 0.1  # an action value is taken when unit() < ACTION_PROBABILITY


class SplitMix64:
    """The SplitMix64 generator (the same one the id hashing uses), on Python integers."""

    __slots__ = ("state",)

    def __init__(self, seed: int):
        if not 0 <= seed <= MASK64:
            raise ValueError(f"seed {seed} is not in [0, 2**64)")
        self.state = seed

    def next_u64(self) -> int:
        self.state = (self.state + GOLDEN_GAMMA) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """A draw modulo n, in [0, n)."""
        return self.next_u64() % n

    def unit(self) -> float:
        """A draw's top 53 bits over 2**53: a float in [0, 1), computed exactly."""
        return (self.next_u64() >> 11) / (1 << 53)


def synthetic_request_dict(
    seed: int, history: int, candidates: int, surfaces: int
) -> dict[str, Any]:
    """The synthetic request of `seed` (see the module docstring) in the JSON layout:
    `{"user_id", "request_id", "history": [{"post_id", "author_id", "actions": [names],
    "product_surface"}], "candidates": [{"post_id", "author_id", "product_surface"}]}`."""
    if history < 0 or candidates < 0:
        raise ValueError(f"history ({history}) and candidates ({candidates}) must be >= 0")
    if surfaces < 1:
        raise ValueError(f"surfaces ({surfaces}) must be at least 1")
    rng = SplitMix64(seed)
    events = []
    for _ in range(history):
        post_id = rng.next_u64()
        author_id = rng.below(AUTHORS)
        actions = [ACTIONS[a - 1] for a in ACTION_VALUES if rng.unit() < ACTION_PROBABILITY]
        events.append(
            {
                "post_id": post_id,
                "author_id": author_id,
                "actions": actions,
                "product_surface": rng.below(surfaces),
            }
        )
    scored = []
    for _ in range(candidates):
        post_id = rng.next_u64()
        author_id = rng.below(AUTHORS)
        scored.append(
            {"post_id": post_id, "author_id": author_id, "product_surface": rng.below(surfaces)}
        )
    return {
        "user_id": rng.next_u64(),
        "request_id": f"synthetic-{seed}",
        "history": events,
        "candidates": scored,
    }
