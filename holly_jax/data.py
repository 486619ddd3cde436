"""Training data from a config: the simulated table, its splits and the sigma list, checked up front."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from holly_jax import pointfile, schedule, simulate
from holly_jax.errors import InputError


class SimData(NamedTuple):
    """Everything the jitted step reads to draw and render a batch of targets (device arrays)."""
    gt_Nx3: jax.Array
    table: simulate.Table
    sigmas_S: jax.Array


class Dataset(NamedTuple):
    data: SimData
    splits: dict[str, np.ndarray]  # item indices per split
    opts: simulate.SimOptions
    size: tuple[int, int]


def sim_options(cfg: ml_collections.ConfigDict) -> simulate.SimOptions:
    d = cfg.data
    for name, value, lo, hi in (("dropout", d.dropout, 0.0, 1.0), ("spawn", d.spawn, 0.0, 1.0)):
        if not lo <= value <= hi:
            raise InputError(None, f"config.data.{name} must be in [{lo}, {hi}], got {value}")
    for name, value in (("wobble", d.wobble), ("max_trans", d.max_trans)):
        if value < 0:
            raise InputError(None, f"config.data.{name} must not be negative, got {value}")
    for name, value in (("max_spawn", d.max_spawn), ("num_aug", d.num_aug)):
        if value < 1:
            raise InputError(None, f"config.data.{name} must be at least 1, got {value}")
    return simulate.SimOptions(translate=bool(d.translate), max_trans=float(d.max_trans), dropout=float(d.dropout),
                               wobble=float(d.wobble), spawn=float(d.spawn), max_spawn=int(d.max_spawn),
                               num_aug=int(d.num_aug))


def sigmas(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """The sigma list: from ``sigma.file`` when set, else ``sigma.list``."""
    if cfg.sigma.file:
        return schedule.read_sigma_file(cfg.sigma.file)
    return schedule.parse_sigmas(str(cfg.sigma.list), "config.sigma.list")


def image_size(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    h, w = int(cfg.data.image_height), int(cfg.data.image_width)
    if h < 8 or w < 8:
        raise InputError(None, f"image size {h}x{w} is too small (at least 8x8)")
    return h, w


def check_batching(b: int, num_train: int, num_test: int) -> None:
    if b <= 0:
        raise InputError(None, f"config.train.batch_size must be positive, got {b}")
    if num_train % b:
        raise InputError(None, f"batch size {b} does not divide the {num_train} training images")
    if num_test > num_train:
        raise InputError(None, f"test set ({num_test} images) is larger than the training data ({num_train})")


def load(cfg: ml_collections.ConfigDict, batch_size: int) -> Dataset:
    """Build the simulated data set a config describes; every problem is an InputError."""
    if cfg.data.source != "simulated":
        raise InputError(None, f"config.data.source: unknown source {cfg.data.source!r}; expected 'simulated'")
    if not cfg.data.object:
        raise InputError(None, "config.data.object is empty: give an OBJ or PLY file to simulate images from")
    gt = pointfile.read_points(cfg.data.object)
    opts = sim_options(cfg)
    sizes = {"train": int(cfg.data.train_size), "test": int(cfg.data.test_size), "valid": int(cfg.data.valid_size)}
    allocation = simulate.read_allocation(cfg.data.allocation) if cfg.data.allocation else None
    key = jax.random.key(cfg.seed)
    k_table, k_split = jax.random.split(jax.random.fold_in(key, 1))
    splits = simulate.split(k_split, sizes, opts.num_aug, allocation)
    check_batching(batch_size, len(splits["train"]), len(splits["test"]))
    table = simulate.make_table_jit(k_table, sum(sizes.values()), opts)
    data = SimData(jnp.asarray(gt), table, jnp.asarray(sigmas(cfg)))
    return Dataset(data, splits, opts, image_size(cfg))
