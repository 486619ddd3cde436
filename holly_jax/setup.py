"""A run's static setup: the config checked, the data loaded, the network built, the run's shape fixed.

``create_setup(cfg)`` is the one place a config becomes a ``Setup``; every
phase (training, refinement, evaluation, inference) reads its settings from
it. The batch is split over a one-axis device mesh ("data"); the state is
replicated.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from holly_jax import data, loss, model, points
from holly_jax.errors import InputError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Setup(NamedTuple):
    """A run's static settings, derived once from the config and the data."""

    cfg: ml_collections.ConfigDict
    ds: data.Dataset
    net: model.HollyNet
    batch_size: int  # the global batch: config batch size times the number of processes
    steps_per_epoch: int
    total_steps: int
    pose_only: bool
    mesh: Mesh  # devices along one "data" axis: the batch is split over them, the state replicated

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Values the data module does not see; each problem is a one-line InputError."""
    choices = (
        ("train.normalise", cfg.train.normalise, loss.NORMALISATIONS),
        ("model.rotation", cfg.model.rotation, tuple(model.ROTATION_HEADS)),
        ("model.dtype", cfg.model.dtype, tuple(DTYPES)),
        ("points.init", cfg.points.init, points.INITS),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            raise InputError(None, f"config.{name}: unknown value {value!r}; expected one of {allowed}")
    for name in ("log_every", "save_every", "max_to_keep"):
        if cfg.train[name] <= 0:
            raise InputError(None, f"config.train.{name} must be positive, got {cfg.train[name]}")
    if cfg.train.epochs <= 0 and cfg.train.steps <= 0:
        raise InputError(None, "config.train.epochs or config.train.steps must be positive")
    if cfg.model.num_heads < 1:
        raise InputError(None, f"config.model.num_heads must be at least 1, got {cfg.model.num_heads}")
    for name in ("lr", "plr"):
        value = cfg.optim[name]
        if value is not None and not value > 0:
            raise InputError(None, f"config.optim.{name} must be positive, got {value}")
    if not 0.0 <= cfg.optim.decay_fraction <= 1.0:
        raise InputError(None, f"config.optim.decay_fraction must be in [0, 1], got {cfg.optim.decay_fraction}")
    if cfg.optim.adapt and cfg.optim.pinterval <= 0:
        raise InputError(None, f"config.optim.pinterval must be positive, got {cfg.optim.pinterval}")
    for name in ("steps", "images", "batch_size"):
        if cfg.refine[name] < 0:
            raise InputError(None, f"config.refine.{name} must not be negative, got {cfg.refine[name]}")
    for name in ("lr", "plr"):
        value = cfg.refine[name]
        if value is not None and not value > 0:
            raise InputError(None, f"config.refine.{name} must be positive, got {value}")


def create_setup(cfg: ml_collections.ConfigDict, devices: list | None = None, cache_dir: Path | None = None) -> Setup:
    """Check the config, load the data and fix the run's shape; the batch is split over ``devices``
    (default: all devices of all processes)."""
    check_config(cfg)
    mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))
    b = int(cfg.train.batch_size) * jax.process_count()
    if b % mesh.size:
        raise InputError(None, f"batch size {b} does not split evenly over {mesh.size} devices")
    ds = data.load(cfg, b, cache_dir)
    ds = ds._replace(arrays=jax.device_put(ds.arrays, NamedSharding(mesh, P())))
    spe = len(ds.splits["train"]) // b
    total = int(cfg.train.steps) if cfg.train.steps > 0 else int(cfg.train.epochs) * spe
    net = model.HollyNet(
        predict_sigma=bool(cfg.model.predict_sigma),
        rotation=cfg.model.rotation,
        max_trans=float(cfg.data.max_trans),
        dtype=DTYPES[cfg.model.dtype],
        num_heads=int(cfg.model.num_heads),
    )
    return Setup(cfg, ds, net, b, spe, total, bool(cfg.points.fixed), mesh)
