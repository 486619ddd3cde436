"""Pose bookkeeping for evaluation: parsing user poses, rotation error in the cloud's frame, tours.

Rotation error (docs/method.md §8): a learned cloud lives in its own frame,
possibly mirrored. The alignment that maps it onto the ground truth (one
rotation A and a handedness, found on the clouds) maps the predicted poses
too: if the network is right, R_pred_i A^T = R_true_i g_i (for a mirror-image
cloud F R_pred_i F A^T, with F = diag(1, 1, -1), since a projection along z
cannot tell F apart), where g_i is any rotation that maps the truth onto
itself: poses that differ by a symmetry of the object give the same image,
so each image's error is its angle to the nearest such g. Without a cloud to
align, A is fitted to the poses (their robust mean, the better handedness).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from holly_jax.errors import InputError

F = np.diag([1.0, 1.0, -1.0])


def parse_pose(text: str) -> np.ndarray:
    """A rotation matrix from ``aa:x,y,z`` (axis-angle, radians), ``euler:a,b,c`` (degrees, extrinsic
    x then y then z) or ``quat:w,x,y,z``."""
    kind, _, values = text.partition(":")
    try:
        numbers = [float(v) for v in re.split(r"[,\s]+", values.strip()) if v]
    except ValueError:
        raise InputError(None, f"pose {text!r}: values must be numbers") from None
    want = {"aa": 3, "euler": 3, "quat": 4}.get(kind.strip().lower())
    if want is None:
        raise InputError(None, f"pose {text!r}: start with aa:, euler: or quat:")
    if len(numbers) != want or not np.all(np.isfinite(numbers)):
        raise InputError(None, f"pose {text!r}: {kind} takes {want} finite numbers")
    if kind == "aa":
        return Rotation.from_rotvec(numbers).as_matrix()
    if kind == "euler":
        return Rotation.from_euler("xyz", numbers, degrees=True).as_matrix()
    if np.linalg.norm(numbers) == 0:
        raise InputError(None, f"pose {text!r}: a quaternion cannot be zero")
    w, x, y, z = numbers
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def _project_so3(m_3x3: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m_3x3)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _angles_deg(a_Bx3x3: np.ndarray, b_3x3: np.ndarray) -> np.ndarray:
    rel = np.einsum("bji,jk->bik", a_Bx3x3, b_3x3)
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def robust_mean(q_Bx3x3: np.ndarray, iterations: int = 10) -> np.ndarray:
    """A rotation central to many: the chordal mean, refit on the images closest to it."""
    mean = _project_so3(q_Bx3x3.sum(0))
    for _ in range(iterations):
        err = _angles_deg(q_Bx3x3, mean)
        keep = err <= max(2.0 * np.median(err), 1.0)
        mean = _project_so3(q_Bx3x3[keep].sum(0))
    return mean


class PoseError(NamedTuple):
    errors_deg: np.ndarray  # per image
    mirrored: bool
    alignment: np.ndarray  # the global rotation A
    groups: list[dict] | None = None  # consistent errors (``error_groups``)

    def summary(self) -> dict:
        e = self.errors_deg
        return {
            "rotation_error_median_deg": float(np.median(e)),
            "rotation_error_mean_deg": float(np.mean(e)),
            "rotation_under_10deg": float(np.mean(e < 10.0)),
            "rotation_mirrored": bool(self.mirrored),
            "rotation_error_groups": self.groups or [],
        }


def representatives(q_Bx3x3: np.ndarray, equal_Sx3x3: np.ndarray) -> np.ndarray:
    """Each error rotation q as s^T q, s the nearest element of ``equal`` (the rotations that count as no
    error): errors that differ only by a symmetry become one."""
    q = np.asarray(q_Bx3x3, np.float64)
    equal = np.asarray(equal_Sx3x3, np.float64)
    nearest = np.argmax(np.einsum("bij,sij->bs", q, equal), axis=1)
    return np.einsum("bji,bjk->bik", equal[nearest], q)


def error_groups(rep_Bx3x3: np.ndarray, radius_deg: float = 20.0, least: float = 0.05, most: int = 4) -> list[dict]:
    """Errors that many images share: where poses fall on one wrong copy of the object, their error
    rotations agree. Given each image's ``representatives``, the largest set within ``radius_deg`` of one
    representative is a group, again on the rest, while a group holds at least
    ``least`` of the images (at most ``most`` groups). Each: its share of the images, its error (degrees,
    the centre's angle; 0 for the right poses) and the axis it turns about, in the truth's frame."""
    rep = np.asarray(rep_Bx3x3, np.float64)
    cos = (np.einsum("aij,bij->ab", rep, rep) - 1.0) / 2.0
    close = cos >= np.cos(np.radians(radius_deg))
    left, groups = np.ones(len(rep), bool), []
    while len(groups) < most and left.any():
        counts = (close & left[None, :]).sum(1) * left
        members = close[np.argmax(counts)] & left
        if members.sum() < least * len(rep):
            break
        centre = _project_so3(rep[members].sum(0))
        rotvec = Rotation.from_matrix(centre).as_rotvec()
        angle = float(np.linalg.norm(rotvec))
        axis = rotvec / angle if angle > 1e-9 else np.array([0.0, 0.0, 1.0])
        groups.append(
            {
                "share": float(members.mean()),
                "error_deg": round(float(np.degrees(angle)), 2),
                "axis": [round(float(v), 4) for v in axis],
            }
        )
        left &= ~members
    return groups


def _angles_to_group_deg(q_Bx3x3: np.ndarray, group_Gx3x3: np.ndarray) -> np.ndarray:
    """Each rotation's angle to the nearest element of the group, in degrees."""
    cos = (np.einsum("bij,gij->bg", q_Bx3x3, group_Gx3x3) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos.max(axis=1), -1.0, 1.0)))


def rotation_error(
    R_true_Bx3x3: np.ndarray,
    R_pred_Bx3x3: np.ndarray,
    frames: list[tuple[np.ndarray, bool]] | None = None,
    group_Gx3x3: np.ndarray | None = None,
    imposed_Hx3x3: np.ndarray | None = None,
) -> PoseError:
    """Per-image rotation error in degrees, the smallest over the truth's symmetry group.

    Each frame ``(R, mirrored)`` is an alignment that maps the learned cloud onto the truth
    (``metrics.Alignment``: x_truth = R M x_learned + t); a prediction is right in it when
    ``F^m R_pred F^m R^T = R_true g`` for a symmetry g of the truth (g X = X). An achiral truth has a frame
    of each handedness (see ``cloud_frames``), and poses of either draw the same images: each image takes
    the nearer (``mirrored`` tells which frame has the lower median). Without frames,
    the frame is fitted to the poses themselves (a robust mean, the better handedness), for a truth with
    no symmetry only (the mean of poses that differ by group elements means nothing).

    A point group imposed on the learned cloud (``imposed_Hx3x3``, in the cloud's frame: h Y = Y) makes
    R_pred h draw the same image as R_pred, so the error is also the smallest over h.
    """
    R_true, R_pred = np.asarray(R_true_Bx3x3, np.float64), np.asarray(R_pred_Bx3x3, np.float64)
    group = np.eye(3)[None] if group_Gx3x3 is None else np.asarray(group_Gx3x3, np.float64)
    imposed = np.eye(3)[None] if imposed_Hx3x3 is None else np.asarray(imposed_Hx3x3, np.float64)
    results, reps = [], []
    if frames is not None:
        for R_align, mirrored in frames:
            pred = F @ R_pred @ F if mirrored else R_pred
            R_align = np.asarray(R_align, np.float64)
            q = np.einsum("bji,bjk,lk->bil", R_true, pred, R_align)  # R_true^T pred R^T
            equal = _with(group, imposed, R_align, mirrored)
            results.append(PoseError(_angles_to_group_deg(q, equal), bool(mirrored), R_align))
            reps.append(representatives(q, equal))
        best = min(results, key=lambda r: np.median(r.errors_deg))
        errors = np.array([r.errors_deg for r in results])
        nearer = np.argmin(errors, axis=0)  # each image's frame, the one its error takes
        groups = error_groups(np.array(reps)[nearer, np.arange(len(nearer))])
        return best._replace(errors_deg=errors.min(axis=0), groups=groups)
    else:
        if len(group) > 1 or len(imposed) > 1:
            raise ValueError("a symmetric truth or an imposed group needs the cloud's frames: pass frames")
        for mirrored in (False, True):
            pred = F @ R_pred @ F if mirrored else R_pred
            q = np.einsum("bji,bjk->bik", R_true, pred)
            a = robust_mean(q)
            results.append(PoseError(_angles_deg(q, a), mirrored, a))
            reps.append(np.einsum("bij,kj->bik", q, a))
    best = int(np.argmin([np.median(r.errors_deg) for r in results]))
    return results[best]._replace(groups=error_groups(reps[best]))


def _with(group_Gx3x3: np.ndarray, imposed_Hx3x3: np.ndarray, R_align: np.ndarray, mirrored: bool) -> np.ndarray:
    """The rotations g k^T (g of the truth's group, k = R F^m h F^m R^T for h imposed on the cloud) an error
    is taken to the nearest of: q = R_true^T pred R^T is right when q k = g."""
    h = F @ imposed_Hx3x3 @ F if mirrored else imposed_Hx3x3
    k = np.einsum("ij,hjk,lk->hil", R_align, h, R_align)
    return np.einsum("gij,hkj->ghik", group_Gx3x3, k).reshape(-1, 3, 3)


def cloud_frames(R_align: np.ndarray, mirrored: bool, mirror_R: np.ndarray | None) -> list[tuple[np.ndarray, bool]]:
    """The frames a cloud alignment gives: itself and, for an achiral truth (``mirror_R`` F X = X, see
    ``symmetry.Symmetry.mirror``), the equally good alignment of the other handedness, F mirror_R^T R F."""
    frames = [(np.asarray(R_align, np.float64), bool(mirrored))]
    if mirror_R is not None:
        frames.append((F @ np.asarray(mirror_R).T @ np.asarray(R_align) @ F, not bool(mirrored)))
    return frames


def greedy_tour(R_Bx3x3: np.ndarray) -> np.ndarray:
    """An order visiting every rotation, each step to the nearest not yet visited (geodesic angle)."""
    n = len(R_Bx3x3)
    order, left = [0], set(range(1, n))
    while left:
        rest = np.array(sorted(left))
        nxt = rest[np.argmin(_angles_deg(R_Bx3x3[rest], R_Bx3x3[order[-1]]))]
        order.append(int(nxt))
        left.remove(int(nxt))
    return np.array(order)
