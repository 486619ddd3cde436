import numpy as np
import pytest
from scipy.spatial import cKDTree

from holly_jax import points
from holly_jax.errors import InputError


def _min_spacing(p):
    d, _ = cKDTree(p).query(p, k=2)
    return d[:, 1]


def test_uniform_fills_the_cube():
    p = points.init_points(5000, "uniform", 0)
    assert p.shape == (5000, 3) and p.dtype == np.float32
    assert p.min() >= -1 and p.max() <= 1
    np.testing.assert_allclose(p.std(0), 2 / np.sqrt(12), rtol=0.05)  # U(-1, 1) has std 0.577


def test_spot_is_a_clipped_gaussian():
    p = points.init_points(5000, "spot", 0)
    np.testing.assert_allclose(p.std(0), 0.1, rtol=0.05)
    assert np.abs(p).max() <= 1.5


def test_poisson_disc_spreads_points_evenly():
    p = points.init_points(200, "poisson", 0)
    u = points.init_points(200, "uniform", 0)
    assert p.min() >= -1 and p.max() <= 1
    # blue noise: the closest pair is far apart and spacings vary much less than for uniform points
    assert _min_spacing(p).min() > 3 * _min_spacing(u).min()
    assert _min_spacing(p).std() / _min_spacing(p).mean() < 0.5 * _min_spacing(u).std() / _min_spacing(u).mean()


def test_deterministic_and_errors():
    np.testing.assert_array_equal(points.init_points(50, "poisson", 3), points.init_points(50, "poisson", 3))
    assert not np.array_equal(points.init_points(50, "uniform", 3), points.init_points(50, "uniform", 4))
    with pytest.raises(InputError, match="unknown method"):
        points.init_points(10, "grid", 0)
    with pytest.raises(InputError, match="positive"):
        points.init_points(0, "uniform", 0)
