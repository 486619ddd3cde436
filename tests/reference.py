"""Slow, independent references the tests compare against (float64 NumPy, SciPy rotations)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def dense_render(points, rotvec, t, sigma, mask, size):
    """docs/method.md §1 written out directly: one Gaussian per point evaluated at every pixel."""
    h, w = size
    points = np.asarray(points, np.float64)
    R = Rotation.from_rotvec(np.asarray(rotvec, np.float64)).as_matrix()
    p = 0.5 * points @ R.T + 0.5 * np.array([t[0], t[1], 0.0])
    px = (h / 2) * p[:, 0] + w / 2
    py = -(h / 2) * p[:, 1] + h / 2
    ys, xs = np.mgrid[0:h, 0:w]
    mask = np.ones(len(points)) if mask is None else np.asarray(mask, np.float64)
    d2 = (px[:, None, None] - xs) ** 2 + (py[:, None, None] - ys) ** 2
    g = np.exp(-d2 / (2 * sigma**2)) * mask[:, None, None]
    return g.sum(0) / (2 * np.pi * sigma**2)
