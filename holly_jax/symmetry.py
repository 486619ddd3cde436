"""The rotational symmetry of a point cloud, found numerically: its point group and its near-symmetries.

A rotation g (about the cloud's centroid) is a symmetry when it maps the cloud
onto itself: every rotated point lands about as close to a cloud point as the
cloud's points lie to each other. That is measured against the cloud's own
spacing, so shapes that are symmetric only in distribution (subunits sampled
independently, as the bundled pore and toroid are) count too. Candidate axes
are the principal axes (every order up to ``MAX_ORDER``) and the directions
to points, to midpoints and centroids of neighbouring points, and their
projections onto the principal planes (orders 2 to 5, which is all the
dihedral and polyhedral groups need). The axes that hold name the group:
Cn, Dn, T, O or I (C1 when none holds); its elements are built by closure.
A near-symmetry maps most of the cloud onto itself but not all of it: a
shape symmetric but for a small feature, where poses go wrong.

    python -m holly_jax.symmetry CLOUD.ply    prints the group and the near-symmetries
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from holly_jax import metrics

MAX_ORDER = 16
MAX_POINTS = 2000
HOLDS = 2.0  # a symmetry: RMS distance of rotated points to the cloud at most this many times its own spacing
MISS = 3.0  # a point is not mapped when it lands farther than this many spacings from the cloud
NEAR_MISSED = 0.25  # a near-symmetry leaves at most this share of the points unmapped
MERGE_DEG = 5.0  # axes (and group elements) closer than this are one
NOT_AN_ELEMENT_DEG = 15.0  # a near-symmetry is at least this far from every element of the group


class Axis(NamedTuple):
    direction: np.ndarray  # unit vector, 3
    order: int  # rotation by 360/order degrees
    ratio: float  # RMS distance of the rotated points to the cloud, in units of the cloud's own spacing
    median: float  # the median distance, in the same units
    missed: float  # share of the points it does not map onto the cloud


class Symmetry(NamedTuple):
    name: str  # "C1", "C8", "D8", "T", "O", "I"
    rotations_Gx3x3: np.ndarray  # the group's elements (the identity first), about the cloud's centroid
    axes: list[Axis]  # the rotations that generate it, highest order first
    near: list[Axis]  # rotations that map most of the cloud but not all of it, closest first
    mirror: np.ndarray | None = None  # R with R F x = x for the centred cloud (F = diag(1, 1, -1)): achiral

    def summary(self) -> dict:
        describe = lambda a: {
            "axis": [round(float(v), 4) for v in a.direction],
            "order": a.order,
            "rms_over_spacing": round(a.ratio, 3),
            "median_over_spacing": round(a.median, 3),
            "unmapped_share": round(a.missed, 3),
        }
        return {
            "symmetry": self.name,
            "symmetry_achiral": self.mirror is not None,
            "symmetry_order": len(self.rotations_Gx3x3),
            "near_symmetries": [describe(a) for a in self.near],
        }


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v[n[..., 0] > 1e-9] / n[n[..., 0] > 1e-9]


def _merge(directions: np.ndarray) -> np.ndarray:
    """Directions with duplicates (either sign, within MERGE_DEG) removed."""
    kept: list[np.ndarray] = []
    cos = np.cos(np.radians(MERGE_DEG))
    for d in directions:
        if not kept or np.max(np.abs(np.asarray(kept) @ d)) < cos:
            kept.append(d)
    return np.asarray(kept)


def _candidates(x_Nx3: np.ndarray, tree: cKDTree) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes, and the other candidate directions."""
    _, vectors = np.linalg.eigh(x_Nx3.T @ x_Nx3)
    principal = vectors.T
    k = min(4, len(x_Nx3) - 1)
    _, nn = tree.query(x_Nx3, k=k + 1)
    mids = (x_Nx3[:, None] + x_Nx3[nn[:, 1:]]) / 2
    tris = (x_Nx3 + x_Nx3[nn[:, 1]] + x_Nx3[nn[:, min(2, k)]]) / 3
    others = np.concatenate([x_Nx3, mids.reshape(-1, 3), tris])
    planar = [others - np.outer(others @ p, p) for p in principal]
    return principal, _merge(_unit(np.concatenate([others, *planar])))


def _distances(x_Nx3: np.ndarray, tree: cKDTree, R_Gx3x3: np.ndarray) -> np.ndarray:
    """Each rotated point's distance to the cloud, G x N (all rotations in one tree query)."""
    d, _ = tree.query(np.einsum("gij,nj->gni", R_Gx3x3, x_Nx3).reshape(-1, 3), workers=-1)
    return d.reshape(len(R_Gx3x3), len(x_Nx3))


def _score(x_Nx3: np.ndarray, tree: cKDTree, spacing_N: np.ndarray, axes: np.ndarray, orders: list[int]) -> list[Axis]:
    """Every (axis, order) pair scored."""
    pairs = [(a, n) for a in axes for n in orders]
    d = _distances(x_Nx3, tree, Rotation.from_rotvec(np.asarray([a * 2 * np.pi / n for a, n in pairs])).as_matrix())
    rms = np.sqrt(np.mean(np.square(spacing_N)))
    ratio = np.sqrt(np.mean(np.square(d), axis=1)) / rms
    median = np.median(d, axis=1) / rms
    missed = np.mean(d > MISS * np.median(spacing_N), axis=1)
    return [Axis(a, n, float(r), float(q), float(m)) for (a, n), r, q, m in zip(pairs, ratio, median, missed)]


def _closure(generators: list[np.ndarray], limit: int = 60) -> np.ndarray:
    """The group the rotations generate, with elements within MERGE_DEG of each other taken as one."""
    elements = [np.eye(3)]
    grew = True
    while grew and len(elements) <= limit:
        grew = False
        for g in generators:
            for e in list(elements)[: limit + 1]:
                h = g @ e
                cos = (np.einsum("gij,ij->g", np.asarray(elements), h) - 1) / 2
                if np.max(cos) < np.cos(np.radians(MERGE_DEG)):
                    elements.append(h)
                    grew = True
    return np.asarray(elements)


def _name(group_Gx3x3: np.ndarray) -> str:
    """Cn, Dn, T, O or I, read off the elements: how many axes carry rotations of order 3 or more."""
    rotvecs = Rotation.from_matrix(group_Gx3x3[1:]).as_rotvec() if len(group_Gx3x3) > 1 else np.zeros((0, 3))
    angles = np.linalg.norm(rotvecs, axis=1)
    axes = _merge(_unit(rotvecs))
    high = _merge(_unit(rotvecs[angles < np.pi - np.radians(MERGE_DEG)]))
    if len(high) > 1:
        return {12: "T", 24: "O", 60: "I"}.get(len(group_Gx3x3), f"G{len(group_Gx3x3)}")
    if len(axes) <= 1:
        return f"C{len(group_Gx3x3)}"
    return f"D{len(group_Gx3x3) // 2}"


def group_rotations(name: str) -> np.ndarray:
    """The rotations (G x 3 x 3, identity first) of a point group named ``c1``, ``cN``, ``dN`` (N >= 1) or
    ``t``, ``o``, ``i``, in a fixed frame: cN about z; dN adds N two-fold axes perpendicular to z, one along
    x; the polyhedral groups with a 2-fold (T), 4-fold (O) or 5-fold (I) axis along z (scipy's frames)."""
    text = str(name).strip().lower()
    kind, number = text[:1], text[1:]
    if kind in ("t", "o", "i") and not number:
        R = Rotation.create_group(kind.upper(), axis="Z").as_matrix()
    elif kind in ("c", "d") and number.isdigit() and int(number) >= 1:
        n = int(number)
        R = Rotation.from_rotvec(np.outer(2 * np.pi * np.arange(n) / n, [0.0, 0.0, 1.0])).as_matrix()
        if kind == "d":
            flips = Rotation.from_rotvec(
                np.pi * np.stack([np.cos(np.pi * np.arange(n) / n), np.sin(np.pi * np.arange(n) / n), np.zeros(n)], 1)
            )
            R = np.concatenate([R, flips.as_matrix()])
    else:
        raise ValueError(f"unknown point group {name!r}: use c1, cN, dN (N >= 1), t, o or i")
    first = np.argmin(np.linalg.norm(R - np.eye(3), axis=(1, 2)))
    return np.concatenate([R[first : first + 1], np.delete(R, first, axis=0)])


def find(points_Nx3: np.ndarray) -> Symmetry:
    """The proper rotational point group of a cloud (about its centroid) and its near-symmetries."""
    x = np.asarray(points_Nx3, np.float64)
    x = x - x.mean(0)
    if len(x) > MAX_POINTS:  # a large cloud: its symmetry shows in a sample
        x = x[np.random.default_rng(0).choice(len(x), MAX_POINTS, replace=False)]
    if len(x) < 3:
        return Symmetry("C1", np.eye(3)[None], [], [])
    tree = cKDTree(x)
    spacing = tree.query(x, k=2)[0][:, 1]
    principal, others = _candidates(x, tree)
    scored = _score(x, tree, spacing, principal, list(range(2, MAX_ORDER + 1)))
    scored += _score(x, tree, spacing, others, [2, 3, 4, 5])
    # what rotations that are no symmetry give: a few spacings for a dense cloud, less than one for a sparse one
    random_axes = _unit(np.random.default_rng(0).normal(size=(32, 3)))
    chance = np.median([a.ratio for a in _score(x, tree, spacing, random_axes, [3, 5, 7])])
    limit = min(HOLDS, chance / 4)
    holds = lambda a: a.ratio <= limit and a.missed <= 0.05
    rms = np.sqrt(np.mean(np.square(spacing)))

    def grow(group, axes, candidates):
        """Add each candidate that holds (best first) when every element of the group it makes holds too."""
        for a in sorted(filter(holds, candidates), key=lambda a: a.ratio):
            g = Rotation.from_rotvec(a.direction * 2 * np.pi / a.order).as_matrix()
            if np.max((np.einsum("gij,ij->g", group, g) - 1) / 2) >= np.cos(np.radians(MERGE_DEG)):
                continue  # already in the group
            trial = _closure([Rotation.from_rotvec(b.direction * 2 * np.pi / b.order).as_matrix() for b in axes] + [g])
            if (
                len(trial) <= 60
                and np.max(np.sqrt(np.mean(np.square(_distances(x, tree, trial)), axis=1))) <= limit * rms
            ):
                axes, group = axes + [a], trial
        return group, axes

    group, axes = grow(np.eye(3)[None], [], scored)
    if len(group) > 1 and _name(group).startswith("C"):  # cyclic: two-fold axes across it, 1 degree apart?
        main = max(axes, key=lambda a: a.order).direction
        u = np.cross(main, [1.0, 0, 0] if abs(main[0]) < 0.9 else [0, 1.0, 0])
        u /= np.linalg.norm(u)
        angles = np.radians(np.arange(0, 180, 1.0))
        across = np.outer(np.cos(angles), u) + np.outer(np.sin(angles), np.cross(main, u))
        group, axes = grow(group, axes, _score(x, tree, spacing, across, [2]))
    axes.sort(key=lambda a: -a.order)
    cos = np.cos(np.radians(MERGE_DEG))
    near: list[Axis] = []
    for a in sorted(scored, key=lambda a: a.missed):
        if holds(a) or a.median > limit or a.missed > NEAR_MISSED:
            continue
        g = Rotation.from_rotvec(a.direction * 2 * np.pi / a.order).as_matrix()
        if np.max((np.einsum("gij,ij->g", group, g) - 1) / 2) >= np.cos(np.radians(NOT_AN_ELEMENT_DEG)):
            continue  # close to a rotation of the group: no new way to go wrong
        if not any(abs(b.direction @ a.direction) >= cos and b.order == a.order for b in near):
            near.append(a)
    return Symmetry(_name(group), group, axes, near[:10], _mirror(x, tree, limit * rms))


def _mirror(x_Nx3: np.ndarray, tree: cKDTree, tolerance: float) -> np.ndarray | None:
    """R with R F x mapping the centred cloud onto itself (an improper symmetry), or None (a chiral cloud)."""
    mirrored = x_Nx3 @ metrics.MIRROR
    best = metrics.align(mirrored, x_Nx3, starts=16, allow_mirror=False)
    d, _ = tree.query(best.apply(mirrored))
    return best.R if np.sqrt(np.mean(np.square(d))) <= tolerance else None


def main(argv: list[str] | None = None) -> None:
    from holly_jax import pointfile
    from holly_jax.errors import InputError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m holly_jax.symmetry CLOUD.ply|CLOUD.obj")
    try:
        result = find(pointfile.read_points(argv[0]))
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{argv[0]}: {result.name} ({len(result.rotations_Gx3x3)} rotations)")
    for a in result.axes:
        print(f"  axis {np.round(a.direction, 3)}: {a.order}-fold, RMS {a.ratio:.2f} x the point spacing")
    for a in result.near:
        print(f"  near: {a.order}-fold about {np.round(a.direction, 3)}, {100 * a.missed:.0f}% of the points unmapped")


if __name__ == "__main__":
    main()
