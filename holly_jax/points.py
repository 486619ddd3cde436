"""Initial point clouds: uniform in [-1, 1]^3, a Gaussian spot, or Poisson-disc (docs/method.md §5)."""

from __future__ import annotations

import numpy as np

from holly_jax.errors import InputError

INITS = ("uniform", "spot", "poisson")


def init_points(num: int, method: str, seed: int) -> np.ndarray:
    """``num`` starting points (float32, N x 3), deterministic in ``seed``."""
    if num <= 0:
        raise InputError(None, f"config.points.num must be positive, got {num}")
    rng = np.random.default_rng(seed)
    if method == "uniform":
        points = rng.uniform(-1.0, 1.0, (num, 3))
    elif method == "spot":
        points = np.clip(rng.normal(0.0, 0.1, (num, 3)), -1.5, 1.5)
    elif method == "poisson":
        points = best_candidate(rng, num)
    else:
        raise InputError(None, f"config.points.init: unknown method {method!r}; expected one of {INITS}")
    return points.astype(np.float32)


def best_candidate(rng: np.random.Generator, num: int, candidates: int = 30) -> np.ndarray:
    """Poisson-disc-like points in [-1, 1]^3 by Mitchell's best-candidate sampling.

    Each new point is the one of ``candidates`` uniform draws farthest from the points
    so far, which spreads exactly ``num`` points with a near-uniform minimum spacing.
    """
    points = np.empty((num, 3))
    points[0] = rng.uniform(-1.0, 1.0, 3)
    for i in range(1, num):
        cand = rng.uniform(-1.0, 1.0, (candidates, 3))
        d2 = np.sum((cand[:, None, :] - points[None, :i, :]) ** 2, axis=-1).min(axis=1)
        points[i] = cand[np.argmax(d2)]
    return points
