"""Ranking every point group on a cloud: the true group first on exact and noisy clouds in any orientation,
C1 on an asymmetric one, the oriented elements map the cloud onto itself; the command line and its picture."""

import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from test_symmetry import OBJS, TURN, _orbit

from holly_jax import pointfile, symmetry

REPO = OBJS.parent


def _noisy(points, scale, seed=0):
    return points + np.random.default_rng(seed).normal(size=points.shape) * scale


@pytest.mark.parametrize("name", ["C7", "C12", "D5", "D9", "T", "O", "I"])
def test_the_true_group_ranks_first_on_noisy_clouds_in_any_orientation(name):
    cloud = _noisy(_orbit(symmetry.group_rotations(name)), 0.01) @ TURN.T + [0.2, -0.4, 0.1]
    ranking = symmetry.rank(cloud)
    assert ranking.best.name == name and ranking.best.holds
    assert ranking.best.order == len(symmetry.group_rotations(name))
    x = cloud - cloud.mean(0)
    for g in ranking.best.rotations_Gx3x3:  # the group at the orientation found maps the cloud onto itself
        d = np.linalg.norm((x @ g.T)[:, None] - x[None], axis=-1).min(1)
        assert np.sqrt(np.mean(d**2)) < 0.05
    # groups that are not subgroups of the true one fail
    others = [c for c in ranking.candidates if c.name in ("C11", "D13")]
    assert all(c.ratio > ranking.limit and not c.holds for c in others)


def test_the_bundled_shapes_and_an_asymmetric_cloud():
    assert symmetry.rank(pointfile.read_points(OBJS / "nuclear_pore.obj")).best.name == "D8"
    assert symmetry.rank(pointfile.read_points(OBJS / "cep152_toroid.obj")).best.name == "C9"
    asymmetric = symmetry.rank(pointfile.read_points(OBJS / "asymmetric.obj"))
    assert asymmetric.best.name == "C1" and [c.name for c in asymmetric.candidates if c.holds] == ["C1"]
    random = symmetry.rank(np.random.default_rng(3).normal(size=(150, 3)))
    assert random.best.name == "C1"


def test_subgroups_hold_but_rank_below_the_group():
    ranking = symmetry.rank(_noisy(_orbit(symmetry.group_rotations("d6")), 0.01) @ TURN.T)
    holding = [c.name for c in ranking.candidates if c.holds]
    assert holding[0] == "D6" and holding[-1] == "C1"
    assert {"C6", "D3", "C3", "D2", "C2"} <= set(holding) and "C4" not in holding
    orders = [c.order for c in ranking.candidates if c.holds]
    assert orders == sorted(orders, reverse=True)
    assert ranking.summary()["detected_symmetry"] == "D6"


def test_noise_of_the_point_spacing_breaks_the_group():
    """Noise of a few nearest-neighbour spacings hides the symmetry: the ranking must not claim it."""
    exact = _orbit(symmetry.group_rotations("c5"))
    spacing = float(np.median(cKDTree(exact).query(exact, k=2)[0][:, 1]))
    assert symmetry.rank(exact).best.name == "C5"
    assert symmetry.rank(_noisy(exact, 0.3 * spacing, seed=1)).best.name == "C5"
    assert symmetry.rank(_noisy(exact, 3 * spacing, seed=1)).best.name == "C1"


def test_repeated_points_count_once():
    cloud = _orbit(symmetry.group_rotations("c6"))
    assert symmetry.rank(np.concatenate([cloud, cloud, cloud[:30]])).best.name == "C6"
    assert symmetry.rank(np.zeros((10, 3))).best.name == "C1"


def test_the_command_line_prints_the_table_and_writes_the_picture(tmp_path):
    cloud = tmp_path / "cloud.ply"
    pointfile.write_points(cloud, _orbit(symmetry.group_rotations("c4")) @ TURN.T)
    run = subprocess.run(
        [sys.executable, "-m", "holly_jax.symmetry", str(cloud)], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("rank"))
    assert lines[first + 1].split()[:3] == ["1", "C4", "4"]
    assert len([line for line in lines if line.strip()[:1].isdigit()]) == len(symmetry.CANDIDATES) + 1
    assert "--config.model.symmetry=c4" in run.stdout
    picture = tmp_path / "cloud.ply.symmetry.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    usage = subprocess.run([sys.executable, "-m", "holly_jax.symmetry"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode != 0 and len(usage.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [sys.executable, "-m", "holly_jax.symmetry", str(tmp_path / "nope.ply")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope.ply" in missing.stderr


def test_a_turned_copy_scores_the_same():
    cloud = _noisy(_orbit(symmetry.group_rotations("d4")), 0.01)
    a, b = symmetry.rank(cloud), symmetry.rank(cloud @ Rotation.random(random_state=9).as_matrix().T)
    assert a.best.name == b.best.name == "D4"
    assert abs(a.best.ratio - b.best.ratio) < 0.1 * a.limit


def test_a_ring_smeared_round_its_axis_is_more_symmetric_than_an_imposed_group_explains():
    """A wrong group imposed on a ring can smear its subunits round the axis: every order then holds, and
    the detected group does not contain the imposed one. A cloud that only has the group does."""
    c7 = symmetry.group_rotations("c7")
    assert symmetry.contains(symmetry.rank(_orbit(c7) @ TURN.T).best.rotations_Gx3x3, TURN @ c7 @ TURN.T)
    angles = np.arange(113) * 2 * np.pi / 113  # a prime count: the ring has no order up to 16 exactly
    ring = _noisy(np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], 1), 0.002)
    smeared = symmetry.rank(ring @ TURN.T)
    assert smeared.best.order > 16 and not symmetry.contains(smeared.best.rotations_Gx3x3, TURN @ c7 @ TURN.T)


def test_a_stray_point_does_not_hide_the_group():
    """A learned point left far out (seen in a C1 run of the pore) has no structure to map: it is left out."""
    pore = pointfile.read_points(OBJS / "nuclear_pore.obj")
    stray = np.concatenate([pore, [[4.0, 0.5, -1.0]]])
    assert symmetry.rank(stray).best.name == "D8" and symmetry.find(stray).name in ("C8", "D8")
