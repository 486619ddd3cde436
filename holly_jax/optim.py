"""The optimiser and its learning-rate schedules (docs/method.md §5).

AdamW with one learning rate for the network and one for the points, each
constant and then (``optim.decay_fraction`` > 0) falling linearly to zero; the
optional "adapt" reduce-on-plateau scale multiplies both.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


class AdaptState(NamedTuple):
    """Reduce-on-plateau of both learning rates, fed by the RMS movement of the points."""

    scale: jax.Array  # multiplies both learning rates
    anchor_Nx3: jax.Array  # the points at the last check
    best: jax.Array  # smallest movement seen
    bad: jax.Array  # checks since the movement last improved


def decaying(lr: float, total_steps: int, fraction: float) -> optax.Schedule:
    """``lr``, falling linearly to zero over the last ``fraction`` of ``total_steps``."""
    decay_steps = int(round(float(fraction) * total_steps))
    lr = float(lr)
    if decay_steps <= 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, decay_steps)], [total_steps - decay_steps]
    )


def learning_rates(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.Schedule, optax.Schedule]:
    """Network and point learning rates by step (the points default to the network's rate)."""
    o = cfg.optim
    plr = o.lr if o.plr is None else o.plr
    return (decaying(o.lr, total_steps, o.decay_fraction), decaying(plr, total_steps, o.decay_fraction))


def adamw(cfg: ml_collections.ConfigDict, lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """AdamW with the config's moments, epsilon and weight decay."""
    o = cfg.optim
    return optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)


def make_optimizer(cfg: ml_collections.ConfigDict, pose_only: bool, total_steps: int) -> optax.GradientTransformation:
    """AdamW over ``{"net": ..., "points": ...}``, one rate each; the points frozen in pose-only mode."""
    lr, plr = learning_rates(cfg, total_steps)
    return optax.multi_transform(
        {"net": adamw(cfg, lr), "points": optax.set_to_zero() if pose_only else adamw(cfg, plr)},
        lambda params: {"net": "net", "points": "points"},
    )


def initial_adapt(points_Nx3: jax.Array) -> AdaptState:
    return AdaptState(jnp.float32(1.0), jnp.copy(points_Nx3), jnp.float32(jnp.inf), jnp.int32(0))  # no shared buffer


def adapt_update(a: AdaptState, points_Nx3: jax.Array, step: jax.Array, cfg: ml_collections.ConfigDict) -> AdaptState:
    """Every ``pinterval`` steps: the RMS point movement since the last check feeds a plateau counter."""

    def check(a: AdaptState) -> AdaptState:
        rmsd = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(points_Nx3 - a.anchor_Nx3), axis=-1)))
        improved = rmsd < a.best * (1.0 - 1e-4)
        bad = jnp.where(improved, 0, a.bad + 1)
        reduce = bad > cfg.optim.adapt_patience
        return AdaptState(
            jnp.where(reduce, a.scale * cfg.optim.adapt_factor, a.scale),
            points_Nx3,
            jnp.where(improved, rmsd, a.best),
            jnp.where(reduce, 0, bad),
        )

    return jax.lax.cond(step % cfg.optim.pinterval == 0, check, lambda a: a, a)
