"""Sampling, voting policies, accuracy-vs-k estimator (skeleton; see issue 7)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EvalConfig:
    k: int = 8  # sampled paths per problem and mode
    temperature: float = 0.7  # sampling temperature for the k paths
    seed: int = 0  # base seed; per-sample seeds derive from it

