"""A run's static setup: the config checked, the data loaded, the network built, the run's shape fixed.

``create_setup(cfg)`` is the one place a config becomes a ``Setup``; every
phase (training, refinement, evaluation, inference) reads its settings from
it. The batch is split over a one-axis device mesh ("data"); the state is
replicated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from holly_jax import data, locs, loss, model, points, search, symmetry
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
    group: np.ndarray | None = None  # G x 3 x 3: the point group imposed on the cloud (None: c1)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def replicate(self, tree: Any) -> Any:
        """Host values (the same on every process) as arrays on every device of the mesh."""
        return place(tree, self.replicated())

    def split(self, tree: Any) -> Any:
        """A host batch (the same on every process) as arrays split over the mesh's devices."""
        return place(tree, self.batch_sharded())

    def local(self) -> Setup:
        """This setup on this process's own devices, for work process 0 does alone (evaluation, the half-set
        comparison); itself when there is one process."""
        if jax.process_count() == 1:
            return self
        mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
        arrays = jax.device_put(jax.device_get(self.ds.arrays), NamedSharding(mesh, P()))
        return self._replace(mesh=mesh, ds=self.ds._replace(arrays=arrays))


def place(tree: Any, sharding: NamedSharding) -> Any:
    """``jax.device_put(tree, sharding)`` where the mesh spans several processes too: each process holds the
    same host values and puts its own devices' parts of them there."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # a key array travels as its raw bits
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


class Bounds(NamedTuple):
    """The range of a numeric config field (``None``: unbounded on that side)."""

    low: float | None
    high: float | None = None
    low_open: bool = False  # the low end itself is excluded
    high_open: bool = False
    optional: bool = False  # None is allowed (a placeholder)
    integer: bool = False

    def holds(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low == 0 and self.low_open and self.high is None:
            return "positive"
        if self.low is not None and self.high is None:
            return f"{kind} of at least {self.low:g}" if not self.low_open else f"{kind} above {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


_COUNT = Bounds(1, integer=True)
_SIZE = Bounds(0, integer=True)  # 0: none, or (train_size of real data) all
_POSITIVE = Bounds(0, low_open=True)
_FRACTION = Bounds(0, 1)
# Every numeric field of configs/default.py and its range (tests/test_setup.py checks that none is missing).
BOUNDS: dict[str, Bounds] = {
    "seed": Bounds(0, 2**32 - 1, integer=True),
    "data.pixel_nm": Bounds(0),
    "data.image_height": Bounds(8, integer=True),
    "halves.half": Bounds(0, 2, integer=True),
    "halves.voxel": Bounds(0),
    "data.image_width": Bounds(8, integer=True),
    "data.train_size": _SIZE,
    "data.test_size": _SIZE,
    "data.valid_size": _SIZE,
    "data.max_trans": Bounds(0),
    "data.dropout": Bounds(0, 1, high_open=True),
    "data.wobble": Bounds(0),
    "data.spawn": Bounds(0, 1, low_open=True),
    "data.max_spawn": _COUNT,
    "data.num_aug": _COUNT,
    "model.num_heads": Bounds(1, 64, integer=True),
    "points.num": _COUNT,
    "optim.lr": _POSITIVE,
    "optim.plr": _POSITIVE._replace(optional=True),
    "optim.weight_decay": Bounds(0),
    "optim.b1": Bounds(0, 1, high_open=True),
    "optim.b2": Bounds(0, 1, high_open=True),
    "optim.eps": _POSITIVE,
    "optim.decay_fraction": _FRACTION,
    "optim.pinterval": _COUNT,
    "optim.adapt_factor": Bounds(0, 1, low_open=True),
    "optim.adapt_patience": _SIZE,
    "train.batch_size": _COUNT,
    "train.epochs": _SIZE,
    "train.steps": _SIZE,
    "train.log_every": _COUNT,
    "train.save_every": _COUNT,
    "train.max_to_keep": _COUNT,
    "refine.steps": _SIZE,
    "refine.images": _SIZE,
    "refine.batch_size": _SIZE,
    "refine.lr": _POSITIVE,
    "refine.plr": _POSITIVE._replace(optional=True),
    "refine.relabel_every": _SIZE,
    "refine.trim": Bounds(0, 1, high_open=True),
    "refine.relocate_every": _SIZE,
    "search.grid_deg": Bounds(3, 90),  # 3 degrees: 550,000 rotations, 20 MB
    "search.levels": Bounds(0, 8, integer=True),
    "search.keep": Bounds(1, 256, integer=True),
    "search.chunk": _COUNT,
    "search.again_at": Bounds(0, 1, high_open=True),
}


def field(cfg: ml_collections.ConfigDict, dotted: str):
    for name in dotted.split("."):
        cfg = cfg[name]
    return cfg


def init_seed(cfg: ml_collections.ConfigDict) -> int:
    """The seed of the network's weights and the starting points: ``seed``, or for a half-set run another
    seed per half, so that the two halves start independently (docs/method.md §8)."""
    half = int(cfg.halves.half)
    return int(cfg.seed) if half == 0 else (int(cfg.seed) + half * 1_000_003) % 2**32


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Every value checked up front (ranges, choices, the sigma list); each problem is a one-line InputError
    naming the field."""
    for name, bounds in BOUNDS.items():
        value = field(cfg, name)
        if value is None and bounds.optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(None, f"config.{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(None, f"config.{name} must be finite, got {value}")
        if bounds.integer and value != int(value):
            raise InputError(None, f"config.{name} must be an integer, got {value}")
        if not bounds.holds(value):
            raise InputError(None, f"config.{name} must be {bounds.describe()}, got {value}")
    choices = (
        ("data.source", cfg.data.source, data.SOURCES),
        ("data.file_type", str(cfg.data.file_type).lower(), ("", *locs.LOCAN_TYPES)),
        ("train.normalise", cfg.train.normalise, loss.NORMALISATIONS),
        ("model.rotation", cfg.model.rotation, tuple(model.ROTATION_HEADS)),
        ("model.dtype", cfg.model.dtype, tuple(DTYPES)),
        ("points.init", cfg.points.init, points.INITS),
        ("search.use", cfg.search.use, search.USES),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            raise InputError(None, f"config.{name}: unknown value {value!r}; expected one of {allowed}")
    breaks = cfg.refine.relabel_every > 0 and str(cfg.model.symmetry).strip().lower() == "c1" and not cfg.points.fixed
    if cfg.search.at_break and not breaks:
        raise InputError(
            None,
            "config.search.at_break searches at the symmetry-breaking step: it needs refine.relabel_every > 0, "
            "learned points and no imposed model.symmetry",
        )
    if cfg.search.again_at > 0 and cfg.refine.steps <= 0:
        raise InputError(None, "config.search.again_at searches the refinement's rows: it needs refine.steps > 0")
    if cfg.train.epochs <= 0 and cfg.train.steps <= 0:
        raise InputError(None, "config.train.epochs or config.train.steps must be positive")
    data.sigmas(cfg)  # the sigma list (or file): finite positive numbers


def create_setup(cfg: ml_collections.ConfigDict, devices: list | None = None, cache_dir: Path | None = None) -> Setup:
    """Check the config, load the data and fix the run's shape; the batch is split over ``devices``
    (default: all devices of all processes)."""
    check_config(cfg)
    mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))
    b = int(cfg.train.batch_size) * jax.process_count()
    if b % mesh.size:
        raise InputError(None, f"batch size {b} does not split evenly over {mesh.size} devices")
    ds = data.load(cfg, b, cache_dir)
    ds = ds._replace(arrays=place(ds.arrays, NamedSharding(mesh, P())))
    spe = len(ds.splits["train"]) // b
    total = int(cfg.train.steps) if cfg.train.steps > 0 else int(cfg.train.epochs) * spe
    net = model.HollyNet(
        predict_sigma=bool(cfg.model.predict_sigma),
        rotation=cfg.model.rotation,
        max_trans=float(cfg.data.max_trans),
        dtype=DTYPES[cfg.model.dtype],
        num_heads=int(cfg.model.num_heads),
    )
    return Setup(cfg, ds, net, b, spe, total, bool(cfg.points.fixed), mesh, imposed_group(cfg))


def imposed_group(cfg: ml_collections.ConfigDict) -> np.ndarray | None:
    """``model.symmetry`` as rotations (None for c1), checked against the points it must divide."""
    try:
        group = symmetry.group_rotations(cfg.model.symmetry)
    except ValueError as e:
        raise InputError(None, f"config.model.symmetry: {e}") from None
    if len(group) == 1:
        return None
    if cfg.points.fixed:
        raise InputError(None, "config.model.symmetry imposes a group on learned points; points.fixed holds them")
    if int(cfg.points.num) % len(group):
        raise InputError(
            None,
            f"config.points.num ({cfg.points.num}) must be divisible by the order of "
            f"{cfg.model.symmetry} ({len(group)})",
        )
    return group
