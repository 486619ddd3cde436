"""Training data from a config, checked up front: simulated items, FITS image sets or localisation particles.

A ``Dataset`` holds the item splits and, in ``arrays``, the device arrays the
jitted step reads to make a batch's target images (``targets``): simulated
items and localisation particles are drawn inside the step from tables of
items (docs/method.md §3); a FITS data set hands the step batches of images
gathered on the host (blurred inside the step at the schedule's sigma when the
folder holds one set, or read from the folder of the schedule's current entry
when it holds one subfolder per sigma).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from holly_jax import fits, locs, pointfile, render, rotations, salts, schedule, simulate
from holly_jax.errors import InputError


class SimulatedArrays(NamedTuple):
    """Everything the jitted step reads to draw and render a batch of simulated targets."""

    gt_Nx3: jax.Array
    table: simulate.Table
    sigmas_S: jax.Array


class FitsArrays(NamedTuple):
    """What the jitted step reads besides the batch of FITS images: the sigma list."""

    sigmas_S: jax.Array


class LocsArrays(NamedTuple):
    """Particles from a localisation table, in object units (see ``load_locs``), for the jitted step."""

    xy_PxLx2: jax.Array
    mask_PxL: jax.Array
    sigmas_S: jax.Array
    key: jax.Array  # in-plane rotation angles derive from it, the step and the batch position


DataArrays = SimulatedArrays | FitsArrays | LocsArrays  # what the jitted steps take as their data argument


class Dataset(NamedTuple):
    arrays: DataArrays
    splits: dict[str, np.ndarray]  # item (or image) indices per split
    opts: simulate.SimOptions | None
    size: tuple[int, int]
    source: str = "simulated"
    fits_images: fits.FitsImages | None = None  # the image folders of a FITS data set
    scale: Scale | None = None  # nm per object unit, and how it was set
    groups: np.ndarray | None = None  # localisation particles: each item's group id in the file


class Scale(NamedTuple):
    """nm per object unit (None: unitless, object units only) and how it was set (docs/method.md §7)."""

    nm_per_unit: float | None
    how: str

    def pixel_nm(self, height: int) -> float | None:
        """nm per image pixel: one object unit spans H/4 pixels."""
        return None if self.nm_per_unit is None else self.nm_per_unit / (height / 4.0)


def scale_of(cfg: ml_collections.ConfigDict) -> Scale:
    """The scale ``data.pixel_nm`` sets (0: unitless)."""
    h = image_size(cfg)[0]
    if cfg.data.pixel_nm > 0:
        return Scale(float(cfg.data.pixel_nm) * h / 4.0, f"data.pixel_nm = {cfg.data.pixel_nm:g} nm per pixel, H = {h}")
    return Scale(None, "unitless: set data.pixel_nm (nm per image pixel) for outputs in nm")


SOURCES = ("simulated", "fits", "locs")


def sim_options(cfg: ml_collections.ConfigDict) -> simulate.SimOptions:
    """The simulation settings (their ranges are checked with the rest of the config, in ``setup``)."""
    d = cfg.data
    return simulate.SimOptions(
        translate=bool(d.translate),
        max_trans=float(d.max_trans),
        dropout=float(d.dropout),
        wobble=float(d.wobble),
        spawn=float(d.spawn),
        max_spawn=int(d.max_spawn),
        num_aug=int(d.num_aug),
    )


def sigmas(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """The sigma list: from ``sigma.file`` when set, else ``sigma.list``."""
    if cfg.sigma.file:
        return schedule.read_sigma_file(cfg.sigma.file)
    return schedule.parse_sigmas(str(cfg.sigma.list), "config.sigma.list")


def image_size(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    return int(cfg.data.image_height), int(cfg.data.image_width)


def check_batching(b: int, num_train: int, num_test: int) -> None:
    if num_train % b:
        raise InputError(None, f"batch size {b} does not divide the {num_train} training images")
    if num_test > num_train:
        raise InputError(None, f"test set ({num_test} images) is larger than the training data ({num_train})")


def load(cfg: ml_collections.ConfigDict, batch_size: int, cache_dir: Path | None = None) -> Dataset:
    """Build the data set a config describes; every problem is an InputError."""
    if cfg.data.source == "fits":
        return load_fits(cfg, batch_size, cache_dir)
    if cfg.data.source == "locs":
        return load_locs(cfg, batch_size)
    if not cfg.data.object:
        raise InputError(None, "config.data.object is empty: give an OBJ or PLY file to simulate images from")
    gt = pointfile.read_points(cfg.data.object)
    if len(gt) < 3:
        raise InputError(cfg.data.object, f"has {len(gt)} vertex(es); a shape to learn needs at least 3")
    opts = sim_options(cfg)
    sizes = {"train": int(cfg.data.train_size), "test": int(cfg.data.test_size), "valid": int(cfg.data.valid_size)}
    allocation = simulate.read_allocation(cfg.data.allocation) if cfg.data.allocation else None
    k_table, k_split = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), salts.DATA))
    splits = simulate.split(k_split, sizes, opts.num_aug, allocation)
    splits["train"] = half_of(cfg, splits["train"], batch_size, opts.num_aug, whole_batches=True)
    check_batching(batch_size, len(splits["train"]), len(splits["test"]))
    table = simulate.make_table_jit(k_table, sum(sizes.values()), opts)
    arrays = SimulatedArrays(jnp.asarray(gt), table, jnp.asarray(sigmas(cfg)))
    return Dataset(arrays, splits, opts, image_size(cfg), scale=scale_of(cfg))


def load_fits(cfg: ml_collections.ConfigDict, batch_size: int, cache_dir: Path | None) -> Dataset:
    """A FITS data set: ``data.path`` holds the images, or one subfolder per sigma of the schedule."""
    if not cfg.data.path:
        raise InputError(None, "config.data.path is empty: give the folder of FITS images")
    path = Path(cfg.data.path)
    if not path.is_dir():
        raise InputError(path, "data folder not found")
    sig = sigmas(cfg)
    by_sigma = fits.sigma_folders(path)
    if by_sigma:
        if cfg.sigma.interpolate:
            raise InputError(
                path,
                "holds one folder per sigma, so the schedule must be stepped: set --config.sigma.interpolate=False",
            )
        entry_folders = []
        for s in sig:
            match = [f for value, f in by_sigma.items() if abs(value - float(s)) <= 1e-4 * max(1.0, float(s))]
            if not match:
                have = ", ".join(p.name for p in sorted(by_sigma.values()))
                raise InputError(path, f"no folder for sigma {float(s):g} of the schedule (folders: {have})")
            entry_folders.append(match[0])
        images = fits.FitsImages(entry_folders, blur=False, size=image_size(cfg), cache_dir=cache_dir)
    else:
        images = fits.FitsImages([path] * len(sig), blur=True, size=image_size(cfg), cache_dir=cache_dir)
    splits = real_splits(cfg, len(images), batch_size, path)
    return Dataset(FitsArrays(jnp.asarray(sig)), splits, None, image_size(cfg), "fits", images, scale_of(cfg))


def half_of(
    cfg: ml_collections.ConfigDict, train: np.ndarray, batch_size: int, num_aug: int = 1, whole_batches: bool = False
) -> np.ndarray:
    """The training items of half ``halves.half`` (1 or 2; 0: all): the base items (``num_aug`` copies
    each) split into two disjoint halves of equal size by a permutation keyed by the seed alone, so both
    halves of one seed agree on the split (``whole_batches``: each half a whole number of batches)."""
    half = int(cfg.halves.half)
    if half == 0:
        return train
    bases = np.unique(np.asarray(train) // num_aug)
    m = len(bases) // 2
    if whole_batches:
        m -= m % (batch_size // np.gcd(batch_size, num_aug))
    if m * num_aug < max(2, batch_size):
        raise InputError(
            None,
            f"{len(bases)} training items are too few to split into halves: each half needs at least "
            f"{max(2, batch_size)} (the batch size), so at least {2 * max(2, batch_size)} in all",
        )
    order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(cfg.seed), salts.HALVES), len(bases)))
    chosen = bases[order[:m] if half == 1 else order[m : 2 * m]]
    return np.asarray(train)[np.isin(np.asarray(train) // num_aug, chosen)]


def real_splits(cfg: ml_collections.ConfigDict, n: int, batch_size: int, source) -> dict[str, np.ndarray]:
    """Test and validation items drawn from n real images or particles; training takes the rest
    (at most ``data.train_size`` when positive)."""
    n_test, n_valid = int(cfg.data.test_size), int(cfg.data.valid_size)
    if n_test + n_valid >= n:
        raise InputError(
            source, f"test set ({n_test}) and validation set ({n_valid}) leave nothing to train on out of {n}"
        )
    n_train = n - n_test - n_valid
    if cfg.data.train_size > 0:
        n_train = min(n_train, int(cfg.data.train_size))
    order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(cfg.seed), salts.DATA), n))
    splits = {
        "test": order[:n_test],
        "valid": order[n_test : n_test + n_valid],
        "train": half_of(cfg, order[n_test + n_valid : n_test + n_valid + n_train], batch_size),
    }
    if batch_size <= 0 or batch_size > len(splits["train"]):
        raise InputError(None, f"batch size {batch_size} does not fit the {len(splits['train'])} training items")
    return {k: v.astype(np.int32) for k, v in splits.items()}


def load_locs(cfg: ml_collections.ConfigDict, batch_size: int) -> Dataset:
    """Particles of a localisation file (``data.path``), drawn with ``data.pixel_nm`` nm per image pixel
    (0: the scale at which the particles are the size of the bundled shapes, ``locs.auto_nm_per_unit``)."""
    if not cfg.data.path:
        raise InputError(None, "config.data.path is empty: give a localisation file (.csv or .hdf5)")
    parts = locs.particles(
        locs.read(cfg.data.path, bool(cfg.data.one_particle), str(cfg.data.file_type)), cfg.data.path
    )
    h, w = image_size(cfg)
    scale = scale_of(cfg)
    if scale.nm_per_unit is None:
        nm = locs.auto_nm_per_unit(parts)
        scale = Scale(nm, f"from the data: 90% of localisations within 1.25 units of their particle's mean (H = {h})")
    units_per_nm = 1.0 / scale.nm_per_unit  # an object unit spans H/4 pixels (docs/method.md §7)
    arrays = LocsArrays(
        jnp.asarray(parts.xy_PxLx2 * units_per_nm),
        jnp.asarray(parts.mask_PxL),
        jnp.asarray(sigmas(cfg)),
        jax.random.fold_in(jax.random.key(cfg.seed), salts.LOCS_ANGLES),
    )
    splits = real_splits(cfg, len(parts.groups), batch_size, cfg.data.path)
    return Dataset(arrays, splits, None, (h, w), "locs", scale=scale, groups=parts.groups)


def in_plane(d: LocsArrays, idx_B: jax.Array, step: jax.Array) -> jax.Array:
    """The in-plane turns (B x 3 x 3, about z) particles idx_B are drawn at at ``step``: a pose predicted from
    such an image is R_in_plane @ R_particle, with R_particle the pose of the particle as the file has it."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.fold_in(d.key, step), idx_B)
    angles = jax.vmap(lambda k: jax.random.uniform(k, (), maxval=2 * jnp.pi))(keys)
    return jax.vmap(lambda a: rotations.quaternion_to_matrix(rotations.z_rotation_quaternion(a)))(angles)


def render_particles(
    d: LocsArrays, idx_B: jax.Array, sigma: jax.Array, step: jax.Array, size: tuple[int, int]
) -> jax.Array:
    """Particles idx_B drawn at sigma, each turned by a random in-plane angle drawn from (key, step, particle):
    the same particle at the same step is the same image."""
    b = idx_B.shape[0]
    R = in_plane(d, idx_B, step)
    xy = d.xy_PxLx2[idx_B]
    points = jnp.concatenate([xy, jnp.zeros(xy.shape[:-1] + (1,), xy.dtype)], axis=-1)
    return render.render_items(points, R, jnp.zeros((b, 2)), jnp.full((b,), sigma), d.mask_PxL[idx_B], size)


def targets(ds: Dataset, arrays: DataArrays, batch: jax.Array, sigma: jax.Array, step: jax.Array) -> jax.Array:
    """A batch's target images at ``sigma``: simulated items or localisation particles (item indices in
    ``batch``) drawn inside the step, or FITS images (``batch`` holds the images; blurred when the data folder
    holds one set). ``step`` picks the particles' in-plane angles."""
    if ds.source == "simulated":
        return simulate.render_targets(
            arrays.gt_Nx3, arrays.table, batch, jnp.full(batch.shape, sigma), ds.opts, ds.size
        )
    if ds.source == "locs":
        return render_particles(arrays, batch, sigma, step, ds.size)
    return fits.blur(batch, sigma) if ds.fits_images.blur else batch
