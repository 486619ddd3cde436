"""Image normalisation and the L1 loss (docs/method.md §4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALISATIONS = ("basic", "none")
_EPS = 1e-12


def normalise(images_BxHxW: jax.Array, mode: str) -> jax.Array:
    """'basic' scales each image so its pixels sum to 100; 'none' leaves it as it is."""
    if mode == "none":
        return images_BxHxW
    if mode != "basic":
        raise ValueError(f"unknown normalisation {mode!r}; expected one of {NORMALISATIONS}")
    total_B = jnp.sum(images_BxHxW, axis=(-2, -1), keepdims=True)
    return images_BxHxW * (100.0 / jnp.maximum(total_B, _EPS))


def l1_per_image(pred_BxHxW: jax.Array, target_BxHxW: jax.Array, mode: str) -> jax.Array:
    """Per-image L1 sum of |normalise(pred) - normalise(target)| -> B."""
    diff = jnp.abs(normalise(pred_BxHxW, mode) - normalise(target_BxHxW, mode))
    return jnp.sum(diff, axis=(-2, -1))


def l1_loss(pred_BxHxW: jax.Array, target_BxHxW: jax.Array, mode: str) -> jax.Array:
    """The original's loss: L1 with reduction 'sum' over the batch and all pixels."""
    return jnp.sum(l1_per_image(pred_BxHxW, target_BxHxW, mode))
