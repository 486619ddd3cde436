import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from holly_jax import poses, symmetry
from holly_jax.errors import InputError

F = np.diag([1.0, 1.0, -1.0])


def test_parse_pose_forms_agree_with_scipy():
    r = Rotation.from_euler("xyz", [30, -45, 120], degrees=True)
    x, y, z, w = r.as_quat()
    for text in (
        f"aa:{','.join(map(str, r.as_rotvec()))}",
        "euler:30,-45,120",
        f"quat:{w},{x},{y},{z}",
        f"quat:{2 * w},{2 * x},{2 * y},{2 * z}",
    ):
        np.testing.assert_allclose(poses.parse_pose(text), r.as_matrix(), atol=1e-12)
    for bad, problem in [
        ("euler:1,2", "3 finite numbers"),
        ("spin:1,2,3", "start with"),
        ("aa:1,x,2", "numbers"),
        ("quat:0,0,0,0", "cannot be zero"),
        ("euler:1,2,nan", "finite"),
    ]:
        with pytest.raises(InputError, match=problem):
            poses.parse_pose(bad)


def _noisy(n, degrees, seed):
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return Rotation.from_rotvec(axes * np.radians(degrees)[:, None]).as_matrix()


@pytest.mark.parametrize("mirrored", [False, True])
def test_rotation_error_recovers_known_errors_after_alignment(mirrored):
    n = 300
    R_true = Rotation.random(n, random_state=0).as_matrix()
    A = Rotation.from_rotvec([0.3, -1.2, 2.0]).as_matrix()  # the learned cloud's own frame
    truth_err = np.where(np.arange(n) < 200, 5.0, 150.0)  # 2/3 of the images 5 deg off, the rest 150 deg
    R_pred = R_true @ _noisy(n, truth_err, 1) @ A
    if mirrored:
        R_pred = F @ R_pred @ F  # what a network sees of a mirror-image cloud
    result = poses.rotation_error(R_true, R_pred)
    assert result.mirrored == mirrored
    np.testing.assert_allclose(result.alignment, A, atol=0.02)
    np.testing.assert_allclose(result.errors_deg, truth_err, atol=1.5)
    summary = result.summary()
    assert summary["rotation_under_10deg"] == pytest.approx(2 / 3)
    assert summary["rotation_error_median_deg"] == pytest.approx(5.0, abs=1.0)


def test_random_predictions_give_large_errors():
    R_true = Rotation.random(400, random_state=2).as_matrix()
    R_pred = Rotation.random(400, random_state=3).as_matrix()
    # uniform rotations: the relative angle has median ~126 deg; a free global alignment lowers it a little
    assert poses.rotation_error(R_true, R_pred).summary()["rotation_error_median_deg"] > 90


def test_greedy_tour_visits_each_rotation_and_steps_to_the_nearest():
    R = Rotation.random(30, random_state=4).as_matrix()
    order = poses.greedy_tour(R)
    assert sorted(order) == list(range(30)) and order[0] == 0
    for i in range(1, 29):
        here, rest = order[i], order[i + 1 :]
        angle = lambda j: Rotation.from_matrix(R[here].T @ R[j]).magnitude()
        assert angle(order[i + 1]) <= min(angle(j) for j in rest) + 1e-12


@pytest.mark.parametrize("symmetric", [False, True])
def test_error_groups_find_poses_on_one_wrong_copy(symmetric):
    """Half the poses right, 30% at one consistent wrong turn (a half turn about x; 40 degrees about a tilted
    axis for a D4 truth, each pose also on a random symmetric copy), 20% random: the groups come back as
    planted, largest first, and the random ones make none."""
    n, rng = 400, np.random.default_rng(5)
    group = symmetry.group_rotations("d4") if symmetric else np.eye(3)[None]
    turn = Rotation.from_rotvec(np.radians(40) * np.array([1.0, 2.0, 2.0]) / 3) if symmetric else None
    wrong = turn.as_matrix() if symmetric else Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()
    kind = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    q = np.where(kind[:, None, None] == 1, wrong, np.eye(3)) @ _noisy(n, np.full(n, 4.0), 6)
    q[kind == 2] = Rotation.random(int(np.sum(kind == 2)), random_state=7).as_matrix()
    q = group[rng.integers(len(group), size=n)] @ q  # any symmetric copy counts as the same error
    R_true, A = Rotation.random(n, random_state=8).as_matrix(), Rotation.random(random_state=9).as_matrix()
    R_pred = R_true @ q @ A  # q = R_true^T R_pred A^T
    groups = poses.rotation_error(R_true, R_pred, [(A, False)], group).summary()["rotation_error_groups"]
    assert len(groups) == 2
    right, off = groups
    assert right["share"] == pytest.approx(np.mean(kind == 0), abs=0.01) and right["error_deg"] < 2
    assert off["share"] == pytest.approx(np.mean(kind == 1), abs=0.01)
    assert off["error_deg"] == pytest.approx(40.0 if symmetric else 180.0, abs=2)
    if not symmetric:
        assert abs(off["axis"][0]) > 0.99
    # without the cloud's frames (fitted to the poses), the same groups for a truth with no symmetry
    if not symmetric:
        fitted = poses.rotation_error(R_true, R_pred).summary()["rotation_error_groups"]
        assert [g["share"] for g in fitted] == [g["share"] for g in groups]
