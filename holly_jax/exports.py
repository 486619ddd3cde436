"""The final cloud in nanometres, for the tools our users open: PLY, napari CSV, Picasso 3D locs, MRC volume.

A run records its scale, nm per object unit (``scale.json``; docs/method.md §7). When it is known:

- ``final_nm.ply``: the points in nm (MeshLab, ChimeraX, Open3D);
- ``final_nm.csv``: napari's points layout (``index, axis-0, axis-1, axis-2`` = z, y, x in nm), which
  napari's built-in reader opens as a Points layer;
- ``final_picasso.hdf5`` + ``.yaml``: a Picasso 3D localisation file (``x``, ``y`` in camera pixels of
  ``CAMERA_PIXEL_NM``, ``z`` and ``lpz`` in nm, ``lpx``/``lpy`` the final render width), which Picasso
  Render shows in 3D;
- ``final.mrc``: the cloud as a density volume (each point a Gaussian of the final render width, voxels of
  a third of it), for ChimeraX; the header's voxel size and origin are in Ångström, MRC's unit.

Without a scale (simulated data or FITS images with ``data.pixel_nm`` unset) none is written: object
units are not nanometres.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from holly_jax import locs, pointfile, volume
from holly_jax.atomic import write_atomic

CAMERA_PIXEL_NM = 130.0  # the camera pixel size stated in the Picasso file: Picasso's x, y are in pixels
VOXELS_PER_SIGMA = 3.0


def write_napari_csv(path: str | Path, points_nm_Nx3: np.ndarray) -> None:
    buf = io.StringIO()
    buf.write("index,axis-0,axis-1,axis-2\n")
    for i, (x, y, z) in enumerate(np.asarray(points_nm_Nx3, np.float64).tolist()):
        buf.write(f"{i},{z:.4f},{y:.4f},{x:.4f}\n")
    write_atomic(path, buf.getvalue().encode())


def write_picasso_3d(path: str | Path, points_nm_Nx3: np.ndarray, sigma_nm: float) -> None:
    """A Picasso 3D file of the points, placed one camera pixel in from the field's corner."""
    p = np.asarray(points_nm_Nx3, np.float64)
    xy = p[:, :2] - p[:, :2].min(0) + CAMERA_PIXEL_NM
    n = len(p)
    table = locs.Localisations(
        xy[:, 0], xy[:, 1], np.zeros(n, np.int64), np.arange(n), np.full(n, 1000.0), np.full(n, sigma_nm), np.zeros(n)
    )
    locs.write_picasso(path, table, CAMERA_PIXEL_NM, z_nm=p[:, 2], generated_by="holly-jax final cloud (nm)")


def write_volume(path: str | Path, points_nm_Nx3: np.ndarray, sigma_nm: float) -> volume.Grid:
    voxel = sigma_nm / VOXELS_PER_SIGMA
    grid = volume.grid_around(np.asarray(points_nm_Nx3, np.float64), voxel, margin=4 * sigma_nm)
    volume.write_mrc(path, volume.density(points_nm_Nx3, sigma_nm, grid), grid.voxel, grid.origin)
    return grid


def write_all(workdir: str | Path, points_Nx3: np.ndarray, nm_per_unit: float | None, sigma_nm: float) -> list[str]:
    """Every nm file of the final cloud into ``workdir`` (none when unitless); the names written."""
    if nm_per_unit is None:
        return []
    workdir = Path(workdir)
    nm = np.asarray(points_Nx3, np.float64) * nm_per_unit
    pointfile.write_ply(workdir / "final_nm.ply", nm)
    write_napari_csv(workdir / "final_nm.csv", nm)
    write_picasso_3d(workdir / "final_picasso.hdf5", nm, sigma_nm)
    write_volume(workdir / "final.mrc", nm, sigma_nm)
    return ["final_nm.ply", "final_nm.csv", "final_picasso.hdf5", "final.mrc"]
