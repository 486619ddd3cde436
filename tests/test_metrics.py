import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from holly_jax import metrics, pointfile
from holly_jax.metrics import MIRROR

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _cloud():
    return pointfile.read_points(REPO / "objs" / "asymmetric.obj").astype(np.float64)


def test_chamfer_closed_forms():
    a = np.random.default_rng(0).normal(size=(100, 3))
    assert metrics.chamfer(a, a) == 0.0
    # a far shifted copy: every nearest neighbour is the shifted twin when the shift is small vs spacing
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3), -1).reshape(-1, 3)
    assert metrics.chamfer(grid, grid + [0.1, 0, 0]) == pytest.approx(0.1)
    assert metrics.hausdorff(grid, np.concatenate([grid, [[0, 0, 5.0]]])) == pytest.approx(2.0)
    # one extra point at distance d from its nearest: it adds d / (2 M) on one side
    extra = np.concatenate([grid, [[0, 0, -1.0]]])
    assert metrics.chamfer(grid, extra) == pytest.approx(0.5 * 1.0 / len(extra))


@pytest.mark.parametrize("mirror", [False, True])
def test_alignment_undoes_rotation_translation_and_mirror(mirror):
    truth = _cloud()
    R = Rotation.from_rotvec([0.4, -2.0, 1.1]).as_matrix()
    moved = truth @ (MIRROR if mirror else np.eye(3)).T @ R.T + [0.3, -0.2, 0.5]
    a = metrics.align(moved, truth)
    assert a.chamfer < 1e-6
    assert a.mirrored == mirror
    np.testing.assert_allclose(a.apply(moved), truth, atol=1e-6)


def test_known_noise_level_survives_alignment():
    truth = _cloud()
    noisy = truth + np.random.default_rng(1).normal(0, 0.02, truth.shape)
    R = Rotation.from_rotvec([1.0, 2.0, -0.5]).as_matrix()
    a = metrics.align(noisy @ R.T, truth)
    assert a.chamfer == pytest.approx(metrics.chamfer(noisy, truth), rel=0.05)
    assert a.chamfer < metrics.chamfer(noisy @ R.T, truth)
