"""Comparing a learned point cloud with a ground truth (docs/method.md §8).

The learned cloud lives in an arbitrary frame and may be the mirror image (an
orthographic projection cannot tell chirality), so distances are taken after
the best rigid alignment, found by ICP from many starting rotations, the
mirror image tried too.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

MIRROR = np.diag([1.0, 1.0, -1.0])


def chamfer(a_Nx3: np.ndarray, b_Mx3: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance both ways, halved."""
    d_ab, _ = cKDTree(b_Mx3).query(a_Nx3)
    d_ba, _ = cKDTree(a_Nx3).query(b_Mx3)
    return 0.5 * (float(np.mean(d_ab)) + float(np.mean(d_ba)))


def hausdorff(a_Nx3: np.ndarray, b_Mx3: np.ndarray) -> float:
    """Largest nearest-neighbour distance either way."""
    d_ab, _ = cKDTree(b_Mx3).query(a_Nx3)
    d_ba, _ = cKDTree(a_Nx3).query(b_Mx3)
    return float(max(d_ab.max(), d_ba.max()))


def kabsch(src_Nx3: np.ndarray, dst_Nx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proper rotation R and translation t minimising sum |R src + t - dst|^2."""
    cs, cd = src_Nx3.mean(0), dst_Nx3.mean(0)
    u, _, vt = np.linalg.svd((src_Nx3 - cs).T @ (dst_Nx3 - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    R = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return R, cd - R @ cs


class Alignment(NamedTuple):
    """x_aligned = R @ (M @ x) + t, with M the identity or the mirror diag(1, 1, -1)."""

    R: np.ndarray
    t: np.ndarray
    mirrored: bool
    chamfer: float

    def apply(self, x_Nx3: np.ndarray) -> np.ndarray:
        m = MIRROR if self.mirrored else np.eye(3)
        return x_Nx3 @ (self.R @ m).T + self.t


def icp(
    src_Nx3: np.ndarray, dst_Mx3: np.ndarray, R0: np.ndarray, iterations: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ICP from a starting rotation (centroids matched first)."""
    tree_dst, src = cKDTree(dst_Mx3), src_Nx3
    R, t = R0, dst_Mx3.mean(0) - R0 @ src.mean(0)
    for _ in range(iterations):
        moved = src @ R.T + t
        _, to_dst = tree_dst.query(moved)
        _, to_src = cKDTree(moved).query(dst_Mx3)
        pairs_src = np.concatenate([src, src[to_src]])
        pairs_dst = np.concatenate([dst_Mx3[to_dst], dst_Mx3])
        R_new, t_new = kabsch(pairs_src, pairs_dst)
        if np.allclose(R_new, R, atol=1e-7) and np.allclose(t_new, t, atol=1e-7):
            break
        R, t = R_new, t_new
    return R, t


def align(
    learned_Nx3: np.ndarray, truth_Mx3: np.ndarray, starts: int = 48, allow_mirror: bool = True, seed: int = 0
) -> Alignment:
    """Best rigid alignment of ``learned`` onto ``truth`` by Chamfer, over ICP runs from many rotations."""
    learned = np.asarray(learned_Nx3, np.float64)
    truth = np.asarray(truth_Mx3, np.float64)
    rotations = np.concatenate([np.eye(3)[None], Rotation.random(starts - 1, random_state=seed).as_matrix()])
    best = None
    for mirrored in (False, True) if allow_mirror else (False,):
        src = learned @ MIRROR.T if mirrored else learned
        for R0 in rotations:
            R, t = icp(src, truth, R0)
            score = chamfer(src @ R.T + t, truth)
            if best is None or score < best.chamfer:
                best = Alignment(R, t, mirrored, score)
    return best


def main(argv: list[str] | None = None) -> None:
    """``python -m holly_jax.metrics LEARNED TRUTH``: aligned Chamfer and Hausdorff distances."""
    import argparse

    from holly_jax import pointfile

    parser = argparse.ArgumentParser(description="Compare a learned point cloud with a ground truth.")
    parser.add_argument("learned")
    parser.add_argument("truth")
    args = parser.parse_args(argv)
    learned, truth = pointfile.read_points(args.learned), pointfile.read_points(args.truth)
    a = align(learned, truth)
    aligned = a.apply(learned)
    print(
        f"aligned Chamfer {a.chamfer:.4f}  Hausdorff {hausdorff(aligned, truth):.4f}  "
        f"mirrored {a.mirrored}  (unaligned Chamfer {chamfer(learned, truth):.4f})"
    )


if __name__ == "__main__":
    main()
