"""A point cloud as a 3D density volume (a sum of isotropic Gaussians on a voxel grid), written as MRC.

The density at voxel centre c is sum_n exp(-|c - p_n|^2 / (2 s^2)) / (2 pi s^2)^(3/2): each Gaussian
integrates to one, so the volume's sum times the voxel volume counts the points inside it. The Gaussian is
separable, so the grid is built chunk by chunk of points as a product of three 1D profiles, on the device.

MRC (``mrcfile``): data indexed (z, y, x), the voxel size and origin in the header in Ångström (the
format's convention, which ChimeraX and every EM tool read): a grid in nm has a voxel size of 10 x nm.
"""

from __future__ import annotations

import os
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holly_jax.atomic import atomic_path

ANGSTROM_PER_NM = 10.0


class Grid(NamedTuple):
    """A cubic-voxel grid: ``shape`` (z, y, x) voxels of side ``voxel``, the first voxel's centre at
    ``origin`` (x, y, z), in the cloud's units."""

    shape: tuple[int, int, int]
    voxel: float
    origin: np.ndarray


def grid_around(points_Nx3: np.ndarray, voxel: float, margin: float) -> Grid:
    """A grid holding every point with ``margin`` to spare, centred on the points' bounding box."""
    if not voxel > 0:
        raise ValueError(f"voxel size must be positive, got {voxel}")
    lo, hi = points_Nx3.min(0) - margin, points_Nx3.max(0) + margin
    counts = np.ceil((hi - lo) / voxel).astype(int) + 1
    centre = (lo + hi) / 2
    origin = centre - (counts - 1) / 2 * voxel
    return Grid((int(counts[2]), int(counts[1]), int(counts[0])), float(voxel), origin)


@partial(jax.jit, static_argnames=("shape", "chunk"))
def _density(points_Nx3, sigma, voxel, origin, shape, chunk):
    n = points_Nx3.shape[0]
    pad = -n % chunk
    pts = jnp.concatenate([points_Nx3, jnp.zeros((pad, 3), points_Nx3.dtype)]).reshape(-1, chunk, 3)
    live = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(-1, chunk)
    axes = [origin[i] + voxel * jnp.arange(shape[2 - i]) for i in range(3)]  # x, y, z voxel centres
    norm = (2 * jnp.pi * sigma**2) ** -1.5

    def add(total, chunk_points):
        p, w = chunk_points
        gx, gy, gz = (jnp.exp(-((axes[i][None, :] - p[:, i : i + 1]) ** 2) / (2 * sigma**2)) for i in range(3))
        plane = (gy[:, :, None] * gx[:, None, :] * w[:, None, None]).reshape(chunk, -1)  # C x (Y X)
        return total + (gz.T @ plane).reshape(shape), None

    total, _ = jax.lax.scan(add, jnp.zeros(shape, jnp.float32), (pts, live))
    return total * norm


def density(points_Nx3: np.ndarray, sigma: float, grid: Grid, chunk: int = 256) -> np.ndarray:
    """The cloud as a (z, y, x) float32 volume on ``grid`` (see the module docstring)."""
    if not sigma > 0:
        raise ValueError(f"Gaussian width must be positive, got {sigma}")
    points = jnp.asarray(points_Nx3, jnp.float32)
    chunk = max(1, min(chunk, len(points_Nx3)))
    return np.asarray(
        _density(
            points,
            jnp.float32(sigma),
            jnp.float32(grid.voxel),
            jnp.asarray(grid.origin, jnp.float32),
            grid.shape,
            chunk,
        )
    )


def write_mrc(path: str | os.PathLike, volume_ZxYxX: np.ndarray, voxel_nm: float, origin_nm: np.ndarray) -> None:
    """An MRC file (atomically), voxel size and origin given in nm and stored in Ångström."""
    import mrcfile

    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume_ZxYxX, np.float32))
        mrc.voxel_size = float(voxel_nm) * ANGSTROM_PER_NM
        x, y, z = (float(v) * ANGSTROM_PER_NM for v in origin_nm)
        mrc.header.origin = (x, y, z)
