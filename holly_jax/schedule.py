"""The sigma schedule: large blur first, small last (docs/method.md §5)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from holly_jax.errors import InputError

DEFAULT_SIGMAS = (10.0, 1.25)
TEAPOT_SIGMAS = (10, 8, 6.4, 5, 4, 3.2, 2.4, 1.9, 1.5, 1.2)
BUNNY_SIGMAS = (
    10,
    9.0,
    8.1,
    7.29,
    6.56,
    5.9,
    5.31,
    4.78,
    4.3,
    3.87,
    3.65,
    3.28,
    2.95,
    2.66,
    2.39,
    2.15,
    1.94,
    1.743,
    1.57,
    1.41,
)


def parse_sigmas(text: str, source: str | os.PathLike | None = None) -> np.ndarray:
    """Sigmas from comma, whitespace or newline separated text; each must be a positive number."""
    fields = [f for f in text.replace(",", " ").split() if f]
    if not fields:
        raise InputError(source, "no sigma values")
    values = []
    for i, field in enumerate(fields):
        try:
            value = float(field)
        except ValueError:
            raise InputError(source, f"sigma entry {i + 1} is not a number: {field!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise InputError(source, f"sigma entry {i + 1} must be positive and finite, got {field}")
        values.append(value)
    return np.asarray(values, np.float32)


def read_sigma_file(path: str | os.PathLike) -> np.ndarray:
    """Sigmas from a sigma CSV file such as ``10,8,6.4,5,4,3.2,2.4,1.9,1.5,1.2``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(path, "sigma file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read sigma file ({e.__class__.__name__})") from None
    return parse_sigmas(text, path)


def sigma_at(sigmas_S: jnp.ndarray, step: jnp.ndarray, total_steps: int, interpolate: bool) -> jnp.ndarray:
    """Sigma after ``step`` of ``total_steps``: progress p = step / total_steps reads list position (S - 1) * p.

    Stepped takes the entry at the floor of that position, linear interpolates. The
    position is computed in integers so that a step landing exactly on an entry takes it.
    Jittable with ``step`` traced: a moving schedule never recompiles.
    """
    sigmas_S = jnp.asarray(sigmas_S, jnp.float32)
    last = sigmas_S.shape[0] - 1
    total = max(int(total_steps), 1)
    scaled = jnp.clip(jnp.asarray(step, jnp.int32), 0, total) * last  # position times total
    lo = jnp.minimum(scaled // total, last)
    if not interpolate:
        return sigmas_S[lo]
    hi = jnp.minimum(lo + 1, last)
    frac = (scaled - lo * total).astype(jnp.float32) / total
    return sigmas_S[lo] * (1.0 - frac) + sigmas_S[hi] * frac
