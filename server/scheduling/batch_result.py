"""What running a batch gives back: `Scores`, shared by the engine that computes it and the
batcher that answers from it, and `Scored`, a call's answer, shared by the batcher and the door
that encodes it (numpy only: the batcher and frontends import no JAX).

Glossary: B chunk rows, C candidate slots per chunk, A actions.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Scores(NamedTuple):
    """A chunk call's output (host arrays)."""

    values: np.ndarray  # float32 [B, C, 2A]: the A logits of each candidate, then their sigmoids
    finite: np.ndarray  # bool [B, C]: all of the candidate's logits are finite


class Unwanted(Exception):
    """Every call waiting for a batch ended before its next device call: the rest of the
    batch is not run."""


class Scored(NamedTuple):
    """What a call's future resolves to."""

    scores: np.ndarray  # float32 [m, W], request order
    model_version: str  # the one version that scored every window of the request
