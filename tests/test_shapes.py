"""Tests of holly_jax.shapes: sizes, bounds, determinism, symmetry (or its absence), objs/ files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from holly_jax.pointfile import read_points
from holly_jax.shapes import (
    FEATURES,
    SHAPES,
    asymmetric_shape,
    branched,
    cep152_toroid,
    lobes,
    main,
    nuclear_pore,
    propeller_knob,
)

OBJS = Path(__file__).resolve().parents[1] / "objs"


def chamfer(a_Nx3: np.ndarray, b_Mx3: np.ndarray) -> float:
    """Symmetric Chamfer distance: the mean of the two mean nearest-neighbour distances."""
    a_to_b = cKDTree(b_Mx3).query(a_Nx3)[0].mean()
    b_to_a = cKDTree(a_Nx3).query(b_Mx3)[0].mean()
    return 0.5 * float(a_to_b + b_to_a)


def rotate_z(points_Nx3: np.ndarray, degrees: float) -> np.ndarray:
    return points_Nx3 @ Rotation.from_euler("z", degrees, degrees=True).as_matrix().T


def kabsch(src_Nx3: np.ndarray, dst_Nx3: np.ndarray) -> np.ndarray:
    """The proper rotation R minimising |R src - dst| for paired, centred points."""
    u, _, vt = np.linalg.svd(src_Nx3.T @ dst_Nx3)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def best_rotated_chamfer(p_Nx3: np.ndarray, q_Mx3: np.ndarray) -> float:
    """Chamfer after the best rotation of q onto p: a 512-rotation grid, then ICP from the best 4."""
    p_Nx3 = p_Nx3 - p_Nx3.mean(axis=0)
    q_Mx3 = q_Mx3 - q_Mx3.mean(axis=0)
    tree = cKDTree(p_Nx3)
    grid = Rotation.random(512, random_state=0).as_matrix()
    scores = [tree.query(q_Mx3 @ r.T)[0].mean() for r in grid]
    best = np.inf
    for r in grid[np.argsort(scores)[:4]]:
        for _ in range(20):
            r = kabsch(q_Mx3, p_Nx3[tree.query(q_Mx3 @ r.T)[1]])
        best = min(best, chamfer(p_Nx3, q_Mx3 @ r.T))
    return best


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_size_bounds_and_determinism(name: str) -> None:
    points_Nx3 = SHAPES[name]()
    assert points_Nx3.dtype == np.float32 and points_Nx3.ndim == 2 and points_Nx3.shape[1] == 3
    assert 200 <= len(points_Nx3) <= 300
    assert np.isfinite(points_Nx3).all()
    assert np.abs(points_Nx3).max() <= 1.8
    assert np.abs(points_Nx3).max() >= 1.45  # scaled like the original's objects
    np.testing.assert_array_equal(points_Nx3, SHAPES[name]())
    assert not np.array_equal(points_Nx3, SHAPES[name](seed=1))  # the seed is used
    assert len(np.unique(points_Nx3, axis=0)) == len(points_Nx3)


@pytest.mark.parametrize(
    "make, n_points",
    [
        (cep152_toroid, 250),
        (nuclear_pore, 230),
        (asymmetric_shape, 201),
        (propeller_knob, 233),
        (lobes, 201),
        (branched, 203),
    ],
)
def test_point_count_is_honoured(make, n_points: int) -> None:
    assert make(n_points=n_points).shape == (n_points, 3)


def test_toroid_has_nine_fold_symmetry() -> None:
    points_Nx3 = cep152_toroid().astype(np.float64)
    on_symmetry = chamfer(points_Nx3, rotate_z(points_Nx3, 40.0))
    off_symmetry = chamfer(points_Nx3, rotate_z(points_Nx3, 20.0))
    assert on_symmetry < 0.4 * off_symmetry
    # Thin in z, a ring in xy with radius about 1.2.
    radius_N = np.linalg.norm(points_Nx3[:, :2], axis=1)
    assert np.ptp(points_Nx3[:, 2]) < 0.5
    assert 1.1 < np.median(radius_N) < 1.4 and radius_N.min() > 0.7


def test_nuclear_pore_has_eight_fold_symmetry_and_two_rings() -> None:
    points_Nx3 = nuclear_pore().astype(np.float64)
    on_symmetry = chamfer(points_Nx3, rotate_z(points_Nx3, 45.0))
    off_symmetry = chamfer(points_Nx3, rotate_z(points_Nx3, 22.5))
    assert on_symmetry < 0.4 * off_symmetry
    # z splits at its largest gap into two equal rings, far apart compared to their spread.
    z_sorted = np.sort(points_Nx3[:, 2])
    split = int(np.argmax(np.diff(z_sorted))) + 1
    lower, upper = z_sorted[:split], z_sorted[split:]
    assert len(lower) == len(upper) == len(points_Nx3) // 2
    assert upper.mean() - lower.mean() > 0.5
    assert max(lower.std(), upper.std()) < 0.1 * (upper.mean() - lower.mean())
    np.testing.assert_allclose([lower.mean(), upper.mean()], [-0.35, 0.35], atol=0.05)


def test_asymmetric_shape_has_no_rotational_symmetry() -> None:
    points_Nx3 = asymmetric_shape().astype(np.float64)
    points_Nx3 -= points_Nx3.mean(axis=0)
    axes = np.concatenate([np.eye(3), Rotation.random(5, random_state=1).apply([0.0, 0.0, 1.0])])
    for axis in axes:
        for degrees in (45.0, 60.0, 72.0, 90.0, 120.0, 180.0):
            rotated = Rotation.from_rotvec(np.deg2rad(degrees) * axis).apply(points_Nx3)
            assert chamfer(points_Nx3, rotated) > 0.25, (axis, degrees)


def test_asymmetric_shape_is_chiral() -> None:
    # Every mirror is one reflection followed by a rotation, so searching rotations of
    # one mirror image covers them all. The mirror-symmetric nuclear pore is the control:
    # the same search must find its mirror image (the noise floor of the search).
    mirror = np.array([1.0, 1.0, -1.0])
    pore = nuclear_pore().astype(np.float64)
    shape = asymmetric_shape().astype(np.float64)
    floor = best_rotated_chamfer(pore, pore * mirror)
    assert best_rotated_chamfer(shape, shape) < 1e-6  # the search finds an exact match
    assert best_rotated_chamfer(shape, shape * mirror) > max(0.15, 2.5 * floor)


def test_the_propeller_is_three_fold_but_for_its_knob() -> None:
    points_Nx3 = propeller_knob().astype(np.float64)
    body, knob = points_Nx3[: -FEATURES["propeller_knob"]], points_Nx3[-FEATURES["propeller_knob"] :]
    assert chamfer(body, rotate_z(body, 120.0)) < 0.4 * chamfer(body, rotate_z(body, 60.0))
    # the knob is one small ball, away from the body: nothing of the body near it, and a turn moves it off
    assert np.linalg.norm(knob - knob.mean(0), axis=1).max() < 0.4
    assert cKDTree(body).query(knob.mean(0))[0] > 0.2
    assert cKDTree(points_Nx3).query(rotate_z(knob, 120.0))[0].min() > 0.2


def test_branched_has_a_rod_a_plate_and_a_blob_and_no_symmetry() -> None:
    points_Nx3 = branched().astype(np.float64)
    # the parts' own shapes from their covariances (principal spreads, largest first): the rod and the branch
    # are lines, the plate a sheet, the blob a solid
    spreads = lambda x: np.sqrt(np.linalg.eigvalsh(np.cov(x.T))[::-1])
    n = len(points_Nx3)
    counts = np.round(np.array([0.3, 0.14, 0.3, 0.26]) * n).astype(int)
    counts[0] += n - counts.sum()
    ends = np.cumsum(counts)
    rod_a = points_Nx3[: counts[0] // 2]
    branch = points_Nx3[ends[0] : ends[1]]
    plate = points_Nx3[ends[1] : ends[2]]
    blob = points_Nx3[ends[2] :]
    for line in (rod_a, branch):
        s = spreads(line)
        assert s[1] < 0.15 * s[0]
    s = spreads(plate)
    assert s[2] < 0.25 * s[1] and s[1] > 0.3 * s[0]
    s = spreads(blob)
    assert s[2] > 0.3 * s[0]
    # no turn of more than 30 degrees maps it (or most of it) onto itself: poses are unique
    centred = points_Nx3 - points_Nx3.mean(0)
    for axis in np.concatenate([np.eye(3), Rotation.random(20, random_state=2).apply([0.0, 0.0, 1.0])]):
        for degrees in (60.0, 90.0, 120.0, 180.0):
            turned = Rotation.from_rotvec(np.deg2rad(degrees) * axis).apply(centred)
            assert chamfer(centred, turned) > 0.2, (axis, degrees)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_shipped_files_match_generators(name: str, suffix: str) -> None:
    path = OBJS / f"{name}{suffix}"
    assert path.exists(), f"{path} missing: run python -m holly_jax.shapes objs/"
    np.testing.assert_allclose(read_points(path), SHAPES[name](), rtol=0, atol=1e-6)


def test_main_writes_all_files(tmp_path: Path) -> None:
    main([str(tmp_path / "out")])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{n}{s}" for n in SHAPES for s in (".obj", ".ply"))
    np.testing.assert_allclose(read_points(tmp_path / "out" / "asymmetric.ply"), asymmetric_shape(), atol=1e-6)
