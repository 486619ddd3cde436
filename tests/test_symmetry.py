"""The symmetry finder against shapes of known groups, and the symmetry-aware rotation error in the cloud's frame."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from holly_jax import metrics, pointfile, poses, symmetry

OBJS = __import__("pathlib").Path(__file__).resolve().parents[1] / "objs"
TURN = Rotation.random(random_state=7).as_matrix()  # every shape is tested in a general orientation


def _cyclic(n):
    return Rotation.from_rotvec(np.outer(np.arange(n) * 2 * np.pi / n, [0, 0, 1])).as_matrix()


def _dihedral(n):
    flip = Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()
    c = _cyclic(n)
    return np.concatenate([c, flip @ c])


def _orbit(group, seed=0):
    """A cluster of points repeated by every rotation of a group: exactly that group's symmetry."""
    # an elongated blob, tilted: no rotation but the group's maps the orbit onto itself, even in distribution
    lean = Rotation.from_euler("zx", [45, 30], degrees=True).as_matrix()
    cluster = (np.random.default_rng(seed).normal(size=(16, 3)) * [0.3, 0.04, 0.04]) @ lean.T + [1.1, 0.3, 0.4]
    return np.concatenate([cluster @ g.T for g in group])


PHI = (1 + 5**0.5) / 2
SOLIDS = {
    "T": np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float),
    "O": np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float),  # the cube
    "I": np.array(
        [[0, a, b * PHI] for a in (-1, 1) for b in (-1, 1)]
        + [[a, b * PHI, 0] for a in (-1, 1) for b in (-1, 1)]
        + [[b * PHI, 0, a] for a in (-1, 1) for b in (-1, 1)],
        float,
    ),
}


@pytest.mark.parametrize(
    "name,points,order",
    [
        ("C5", _orbit(_cyclic(5)), 5),
        ("D3", _orbit(_dihedral(3)), 6),
        ("D4", _orbit(_dihedral(4)), 8),
        ("T", SOLIDS["T"], 12),
        ("O", SOLIDS["O"], 24),
        ("I", SOLIDS["I"], 60),
        ("C1", np.random.default_rng(3).normal(size=(150, 3)), 1),
    ],
)
def test_exact_groups_are_found_in_any_orientation(name, points, order):
    found = symmetry.find(points @ TURN.T + [0.3, -0.2, 0.1])
    assert (found.name, len(found.rotations_Gx3x3)) == (name, order)
    x = points @ TURN.T
    x = x - x.mean(0)
    for g in found.rotations_Gx3x3:  # every element maps the shape onto itself
        d = np.linalg.norm((x @ g.T)[:, None] - x[None], axis=-1).min(1)
        assert d.max() < 0.05 * np.linalg.norm(x, axis=1).max()


def test_the_bundled_shapes():
    assert symmetry.find(pointfile.read_points(OBJS / "nuclear_pore.obj")).name in ("C8", "D8")
    assert symmetry.find(pointfile.read_points(OBJS / "cep152_toroid.obj")).name == "C9"
    assert symmetry.find(pointfile.read_points(OBJS / "asymmetric.obj")).name == "C1"
    lobes = symmetry.find(pointfile.read_points(OBJS / "lobes.obj"))
    assert lobes.name == "C1" and not lobes.near  # irregular: nothing maps most of it onto itself
    branched = symmetry.find(pointfile.read_points(OBJS / "branched.obj"))
    assert branched.name == "C1" and all(a.order >= 12 for a in branched.near)  # small turns of its long axis
    propeller = symmetry.find(pointfile.read_points(OBJS / "propeller_knob.obj"))
    assert propeller.name == "C1"  # the knob breaks the propeller's 3-fold axis, which stays a near-symmetry
    threefold = [a for a in propeller.near if a.order == 3 and abs(a.direction[2]) > 0.99]
    assert threefold and threefold[0].missed < 0.15


def test_a_small_feature_breaks_the_group_and_leaves_a_near_symmetry():
    pore = pointfile.read_points(OBJS / "nuclear_pore.obj")
    knob = np.random.default_rng(0).normal(size=(12, 3)) * 0.05 + [1.3, 0.0, 0.7]
    found = symmetry.find(np.concatenate([pore, knob]))
    assert found.name == "C1"
    eightfold = [a for a in found.near if a.order == 8 and abs(a.direction[2]) > 0.99]
    assert eightfold and 0.03 < eightfold[0].missed < 0.15  # the knob's share, about 12 of 268 points


def _poses(n, seed):
    return Rotation.random(n, random_state=seed).as_matrix()


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_pose_that_differs_by_a_symmetry_has_no_error_and_planted_errors_come_back(mirrored):
    truth = _orbit(_dihedral(4))
    group = symmetry.find(truth).rotations_Gx3x3
    R_a = Rotation.random(random_state=11).as_matrix()  # the learned frame: truth = R_a M learned
    M = metrics.MIRROR if mirrored else np.eye(3)
    learned = (truth - truth.mean(0)) @ R_a @ M  # rows: M R_a^T x
    alignment = metrics.align(learned, truth - truth.mean(0))
    assert alignment.chamfer < 1e-6 and alignment.mirrored == mirrored
    R_true = _poses(64, 1)
    g = group[np.random.default_rng(2).integers(len(group), size=64)]  # any symmetric copy of the true pose
    tilt_deg = np.random.default_rng(3).uniform(0, 20, 64)
    axes = Rotation.random(64, random_state=4).as_rotvec()
    tilt = Rotation.from_rotvec(axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.radians(tilt_deg[:, None]))
    # what a network would predict for the learned cloud: E = F^m R_pred F^m R_a^T = R_true g tilt
    E = np.einsum("bij,bjk,bkl->bil", R_true, g, tilt.as_matrix())
    R_pred = np.einsum("ij,bjk,kl->bil", M, E @ alignment.R, M)
    error = poses.rotation_error(R_true, R_pred, [(alignment.R, alignment.mirrored)], group)
    np.testing.assert_allclose(error.errors_deg, tilt_deg, atol=0.05)
    exact = poses.rotation_error(
        R_true, np.einsum("ij,bjk,kl->bil", M, R_true @ g @ alignment.R, M), [(alignment.R, alignment.mirrored)], group
    )
    assert exact.errors_deg.max() < 0.05
    # without the group, the same exact poses are wrong wherever g is not the identity
    plain = poses.rotation_error(
        R_true, np.einsum("ij,bjk,kl->bil", M, R_true @ g @ alignment.R, M), [(alignment.R, alignment.mirrored)]
    )
    is_identity = np.isclose(np.trace(g, axis1=1, axis2=2), 3.0)
    assert np.all(plain.errors_deg[~is_identity] > 40) and plain.errors_deg[is_identity].max() < 0.05


def test_an_achiral_truth_accepts_poses_of_either_handedness():
    chiral = _orbit(_dihedral(4))
    truth = np.concatenate([chiral, chiral @ metrics.MIRROR])  # its own mirror image: achiral
    found = symmetry.find(truth @ TURN.T)
    assert found.mirror is not None and symmetry.find(chiral @ TURN.T).mirror is None
    truth = truth @ TURN.T
    truth -= truth.mean(0)
    R_a = Rotation.random(random_state=5).as_matrix()
    learned = truth @ R_a  # truth = R_a learned: the alignment (R_a, unmirrored) maps it exactly
    R_true = _poses(32, 6)
    g = found.rotations_Gx3x3[np.random.default_rng(7).integers(len(found.rotations_Gx3x3), size=32)]
    F = metrics.MIRROR
    # the other family: F R_pred Y = R_true g S X with S = mirror F, so the same images (a projection drops z)
    R_pred = np.einsum("ij,bjk,kl->bil", F, R_true @ g @ found.mirror @ F, R_a)
    projected = lambda R, x: np.einsum("bij,nj->bni", R, x)[..., :2]
    np.testing.assert_allclose(projected(R_pred, learned), projected(R_true @ g @ found.mirror @ F, truth), atol=1e-9)
    frames = poses.cloud_frames(R_a, False, found.mirror)
    assert len(frames) == 2
    both = poses.rotation_error(R_true, R_pred, frames, found.rotations_Gx3x3)
    assert both.errors_deg.max() < 0.5
    # half the images in each handedness: still one group of right poses, each image in its nearer frame
    mixed = np.concatenate([R_pred[:16], np.einsum("bij,jk->bik", (R_true @ g)[16:], R_a)])
    groups = poses.rotation_error(R_true, mixed, frames, found.rotations_Gx3x3).groups
    assert len(groups) == 1 and groups[0]["share"] == 1.0 and groups[0]["error_deg"] < 0.5
    one = poses.rotation_error(R_true, R_pred, frames[:1], found.rotations_Gx3x3)
    assert np.median(one.errors_deg) > 10  # judged in one handedness only, the same poses look wrong


@pytest.mark.parametrize("mirrored", [False, True])
def test_poses_that_differ_by_the_imposed_group_have_no_error(mirrored):
    """A group imposed on the learned cloud (h Y = Y, in its own frame): R_pred h draws the same image as R_pred,
    so it counts as right even when the truth's own group is not given; planted errors still come back."""
    truth = _orbit(_cyclic(4))
    truth = truth - truth.mean(0)
    R_a = Rotation.random(random_state=12).as_matrix()
    M = metrics.MIRROR if mirrored else np.eye(3)
    learned = truth @ R_a @ M  # rows: M R_a^T x
    alignment = metrics.align(learned, truth)
    frames = [(alignment.R, alignment.mirrored)]
    imposed = np.einsum("ij,gjk,kl->gil", M @ R_a.T, _cyclic(4), R_a @ M)  # C4 in the learned cloud's frame
    y = learned
    for h in imposed:  # the imposed rotations do map the learned cloud onto itself
        assert np.linalg.norm((y @ h.T)[:, None] - y[None], axis=-1).min(1).max() < 1e-9
    R_true = _poses(48, 13)
    h = imposed[np.random.default_rng(14).integers(4, size=48)]
    tilt_deg = np.random.default_rng(15).uniform(0, 20, 48)
    axes = Rotation.random(48, random_state=16).as_rotvec()
    tilt = Rotation.from_rotvec(axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.radians(tilt_deg[:, None]))
    right = np.einsum("ij,bjk,kl->bil", M, R_true @ tilt.as_matrix() @ alignment.R, M)
    R_pred = right @ h  # draws the learned cloud as `right` does
    images = lambda R: np.einsum("bij,nj->bni", R, y)[..., :2]
    np.testing.assert_allclose(np.sort(images(R_pred), 1), np.sort(images(right), 1), atol=1e-9)
    error = poses.rotation_error(R_true, R_pred, frames, None, imposed)
    np.testing.assert_allclose(error.errors_deg, tilt_deg, atol=0.05)
    plain = poses.rotation_error(R_true, R_pred, frames)
    is_identity = np.isclose(np.trace(h, axis1=1, axis2=2), 3.0)
    assert np.all(plain.errors_deg[~is_identity] > 60)
    with pytest.raises(ValueError, match="frames"):
        poses.rotation_error(R_true, R_pred, None, None, imposed)
