"""Gold-standard half-set FSC: two clouds learned from disjoint halves of the data, compared as volumes.

``compare`` aligns half B's cloud onto half A's (rigid, mirror allowed: a projection cannot tell
handedness), draws both as density volumes (``volume.py``: isotropic Gaussians one voxel wide) on one
cubic grid about A's centroid, applies one smooth spherical mask that holds every point, and correlates
them shell by shell (``fsc.py``). The Gaussians are one voxel wide, not the render width: a Gaussian's
transfer function exp(-2 pi^2 w^2 k^2) would otherwise push the signal below rounding noise well before
Nyquist (at w = sigma, beyond about 0.6 / sigma), where the curve measures noise, not the clouds.
The resolution is where the curve falls below 1/7 (0.143:
each half against the other) and 0.5; in nm where the run has a scale, else in object units. With a
ground truth (simulated data), the average of the aligned halves is also correlated with the truth's
volume, threshold 0.5. Writes ``fsc.json``, ``fsc.png``, ``half_A.mrc``, ``half_B.mrc``, ``average.mrc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from holly_jax import fsc, metrics, outputs, plots, volume

MAX_VOXELS = 256  # a side; the voxel grows beyond it


def cubic_grid(centre: np.ndarray, radius: float, voxel: float) -> volume.Grid:
    """A cube of side 2 * radius about ``centre``, an even number of voxels a side (at most MAX_VOXELS)."""
    n = int(np.ceil(2 * radius / voxel))
    n += n % 2
    if n > MAX_VOXELS:
        n, voxel = MAX_VOXELS, 2 * radius / MAX_VOXELS
    return volume.Grid((n, n, n), float(voxel), centre - (n - 1) / 2 * voxel)


def compare(
    out: Path,
    cloud_a: np.ndarray,
    cloud_b: np.ndarray,
    sigma: float,
    voxel: float,
    nm_per_unit: float | None,
    truth: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The half-set FSC of two clouds (object units; ``voxel`` too, and ``sigma``, the run's final render
    width, which is recorded); see the module docstring."""
    if not voxel > 0:
        raise ValueError(f"voxel size must be positive, got {voxel}")
    a = np.asarray(cloud_a, np.float64)
    alignment = metrics.align(np.asarray(cloud_b, np.float64), a, seed=seed)
    b = alignment.apply(np.asarray(cloud_b, np.float64))
    centre = a.mean(0)
    extent = float(np.linalg.norm(np.concatenate([a, b]) - centre, axis=1).max())
    mask_radius = extent + 3 * voxel  # every point's Gaussian inside
    grid = cubic_grid(centre, mask_radius + 12 * voxel, voxel)  # room for the mask's edge
    n, voxel = grid.shape[0], grid.voxel
    width = voxel
    mask = fsc.soft_mask(n, mask_radius / voxel, 3.0)
    vol_a, vol_b = volume.density(a, width, grid) * mask, volume.density(b, width, grid) * mask
    half = fsc.curve(vol_a, vol_b, voxel)
    scale, unit = (nm_per_unit, "nm") if nm_per_unit else (1.0, "object units")
    results: dict[str, Any] = {
        "unit": unit,
        "nm_per_unit": nm_per_unit,
        "voxel": voxel * scale,
        "grid": n,
        "gaussian_width": width * scale,
        "render_sigma": sigma * scale,
        "mask_radius": mask_radius * scale,
        "halves_chamfer": alignment.chamfer * scale,
        "halves_mirrored": bool(alignment.mirrored),
    }
    for name, threshold in (("0.143", fsc.HALF_SET_THRESHOLD), ("0.5", 0.5)):
        res = fsc.resolution(half, threshold)
        results[f"resolution_{name}"] = res.value * scale
        results[f"resolution_{name}_at_nyquist"] = res.at_nyquist
    curves = {"half A vs half B": (half.frequency / scale, half.fsc)}
    results["curve"] = {"frequency": (half.frequency / scale).tolist(), "fsc": half.fsc.tolist()}
    average = (vol_a + vol_b) / 2
    if truth is not None:
        to_truth = metrics.align(np.concatenate([a, b]), np.asarray(truth, np.float64), seed=seed)
        moved = volume.Grid(grid.shape, voxel, np.asarray(truth, np.float64).mean(0) - (n - 1) / 2 * voxel)
        avg_t = volume.density(to_truth.apply(np.concatenate([a, b])), width, moved) / 2  # the density is linear
        vol_t = volume.density(np.asarray(truth, np.float64), width, moved)
        vs_truth = fsc.curve(avg_t * mask, vol_t * mask, voxel)
        res = fsc.resolution(vs_truth, fsc.TRUTH_THRESHOLD)
        results["truth_resolution_0.5"] = res.value * scale
        results["truth_resolution_0.5_at_nyquist"] = res.at_nyquist
        curves["average vs ground truth"] = (vs_truth.frequency / scale, vs_truth.fsc)
        results["truth_curve"] = {"fsc": vs_truth.fsc.tolist()}
    origin = grid.origin * scale
    for name, vol in (("half_A", vol_a), ("half_B", vol_b), ("average", average)):
        volume.write_mrc(out / f"{name}.mrc", vol, voxel * scale, origin)
    r = results["resolution_0.143"]
    bound = "≤ " if results["resolution_0.143_at_nyquist"] else ""
    plots.save_fsc(
        out / "fsc.png",
        curves,
        (fsc.HALF_SET_THRESHOLD, 0.5),
        unit,
        f"half-set FSC: resolution {bound}{r:.3g} {unit} at 0.143",
    )
    outputs.write_json(out / "fsc.json", results)
    return results
