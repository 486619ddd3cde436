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

``rank`` scores every named candidate group (C2..C16, D2..D16, T, O, I) at
its best orientation and ranks them: the groups that hold, largest first,
then the rest, closest first; the first is the group to impose.

    python -m holly_jax.symmetry CLOUD.ply    prints the ranked table, the group to impose and the
                                              near-symmetries, and draws the scores (CLOUD.ply.symmetry.png)
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from holly_jax import metrics

MAX_ORDER = 16
MAX_POINTS = 2000
HOLDS = 2.0  # a symmetry: RMS distance of rotated points to the cloud at most this many times its own spacing
MISS = 3.0  # a point is not mapped when it lands farther than this many spacings from the cloud
NEAR_MISSED = 0.25  # a near-symmetry leaves at most this share of the points unmapped
MERGE_DEG = 5.0  # axes (and group elements) closer than this are one
ISOLATED = 10.0  # a point whose nearest neighbour is farther than this many median spacings is left out
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
    rotated = np.einsum("gij,nj->gni", R_Gx3x3, x_Nx3).reshape(-1, 3)
    d, _ = tree.query(rotated, workers=-1 if len(rotated) > 20000 else 1)  # threads cost more than a small query
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


class _Cloud(NamedTuple):
    """A centred cloud (a sample of a large one) with what every test of a rotation needs."""

    x_Nx3: np.ndarray
    tree: cKDTree
    spacing_N: np.ndarray  # each point's distance to its nearest neighbour
    rms: float  # the RMS of the spacing: the unit of every ratio
    chance: float  # the ratio rotations that are no symmetry give
    limit: float  # a rotation holds at or below this ratio
    scored: list[Axis]  # candidate axes' generators: principal axes at every order, the others at 2 to 5
    principal_3x3: np.ndarray  # principal axes, one per row


def _cloud(points_Nx3: np.ndarray) -> _Cloud | None:
    x = np.unique(np.asarray(points_Nx3, np.float64), axis=0)  # a repeated point has no spacing
    x = x - x.mean(0)
    if len(x) > MAX_POINTS:  # a large cloud: its symmetry shows in a sample
        x = x[np.random.default_rng(0).choice(len(x), MAX_POINTS, replace=False)]
    if len(x) < 3:
        return None
    spacing = cKDTree(x).query(x, k=2)[0][:, 1]
    if np.any(spacing > ISOLATED * np.median(spacing)):  # stray points (a learned point left far out): no structure
        x = x[spacing <= ISOLATED * np.median(spacing)]
        x = x - x.mean(0)
        if len(x) < 3:
            return None
        spacing = cKDTree(x).query(x, k=2)[0][:, 1]
    tree = cKDTree(x)
    principal, others = _candidates(x, tree)
    scored = _score(x, tree, spacing, principal, list(range(2, MAX_ORDER + 1)))
    scored += _score(x, tree, spacing, others, [2, 3, 4, 5])
    # what rotations that are no symmetry give: a few spacings for a dense cloud, less than one for a sparse one
    random_axes = _unit(np.random.default_rng(0).normal(size=(32, 3)))
    chance = float(np.median([a.ratio for a in _score(x, tree, spacing, random_axes, [3, 5, 7])]))
    rms = float(np.sqrt(np.mean(np.square(spacing))))
    return _Cloud(x, tree, spacing, rms, chance, min(HOLDS, chance / 4), scored, principal)


def find(points_Nx3: np.ndarray) -> Symmetry:
    """The proper rotational point group of a cloud (about its centroid) and its near-symmetries."""
    cloud = _cloud(points_Nx3)
    if cloud is None:
        return Symmetry("C1", np.eye(3)[None], [], [])
    x, tree, spacing, rms, limit, scored = (
        cloud.x_Nx3,
        cloud.tree,
        cloud.spacing_N,
        cloud.rms,
        cloud.limit,
        cloud.scored,
    )
    holds = lambda a: a.ratio <= limit and a.missed <= 0.05

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


def turns(points_Nx3: np.ndarray, keep: float = 1.0 - NEAR_MISSED, iterations: int = 20) -> np.ndarray:
    """The rotations that map the cloud (nearly) onto itself, the identity left out: its group's elements
    and every power of its near-symmetries, K x 3 x 3 (K may be 0). Each is polished by a trimmed ICP (the
    ``1 - keep`` share of points farthest from the cloud after the turn left out of each fit, the turn free
    to move off the centroid, whose place a feature shifts) and its rotation part kept; turns that polish
    to one already kept, or to the identity, are left out."""
    found = find(points_Nx3)
    raw = list(found.rotations_Gx3x3[1:])
    for a in found.near:
        raw += [Rotation.from_rotvec(a.direction * 2 * np.pi * k / a.order).as_matrix() for k in range(1, a.order)]
    x = np.asarray(points_Nx3, np.float64)
    x = x - x.mean(0)
    tree = cKDTree(x)
    polished = [np.eye(3)]
    for R in raw:
        t = np.zeros(3)
        for _ in range(iterations):
            d, nearest = tree.query(x @ R.T + t)
            fit = d <= np.quantile(d, keep)
            R, t = metrics.kabsch(x[fit], x[nearest[fit]])
        apart = [np.degrees(np.arccos(np.clip((np.trace(P.T @ R) - 1) / 2, -1, 1))) for P in polished]
        if min(apart, default=np.inf) > MERGE_DEG:  # near axes found twice polish to the same turn: kept once
            polished.append(R)
    return np.asarray(polished[1:], np.float64).reshape(-1, 3, 3)


def _mirror(x_Nx3: np.ndarray, tree: cKDTree, tolerance: float) -> np.ndarray | None:
    """R with R F x mapping the centred cloud onto itself (an improper symmetry), or None (a chiral cloud)."""
    mirrored = x_Nx3 @ metrics.MIRROR
    best = metrics.align(mirrored, x_Nx3, starts=16, allow_mirror=False)
    d, _ = tree.query(best.apply(mirrored))
    return best.R if np.sqrt(np.mean(np.square(d))) <= tolerance else None


CANDIDATES = [f"C{n}" for n in range(2, MAX_ORDER + 1)] + [f"D{n}" for n in range(2, MAX_ORDER + 1)] + ["T", "O", "I"]
AXIS_TOLERANCE_DEG = 6.0  # two found 3-fold axes fit a polyhedral pair when their angle is this close
REFINE_POINTS = 300  # orientations are chosen and polished on at most this many of the cloud's points


class Candidate(NamedTuple):
    name: str  # "C1", "C8", "D8", "T", "O", "I"
    order: int
    ratio: float  # the worst element's RMS distance of the rotated points to the cloud, in point spacings
    missed: float  # share of the rotated points (all elements) farther than MISS spacings from the cloud
    holds: bool  # every element maps the cloud onto itself
    rotations_Gx3x3: np.ndarray  # the group's elements at the best orientation found, identity first


class Ranking(NamedTuple):
    """Every candidate group at its best orientation, ranked: the groups that hold, largest first (C1 last
    of them), then the others, closest first. The first is the group to impose."""

    candidates: list[Candidate]
    chance: float  # the ratio rotations that are no symmetry give
    limit: float  # a group holds at or below this ratio

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def table(self) -> str:
        lines = [f"{'rank':>4}  {'group':<5} {'order':>5}  {'RMS/spacing':>11}  {'unmapped':>8}  holds"]
        for i, c in enumerate(self.candidates, 1):
            holds = "yes" if c.holds else ""
            lines.append(f"{i:>4}  {c.name:<5} {c.order:>5}  {c.ratio:>11.2f}  {100 * c.missed:>7.0f}%  {holds}")
        return "\n".join(lines)

    def summary(self) -> dict:
        return {
            "detected_symmetry": self.best.name,
            "detected_symmetry_scores": [
                {"group": c.name, "rms_over_spacing": round(c.ratio, 3), "unmapped_share": round(c.missed, 3)}
                for c in self.candidates
                if c.name != "C1"
            ],
        }


def contains(group_Gx3x3: np.ndarray, rotations_Hx3x3: np.ndarray) -> bool:
    """Whether every rotation lies within MERGE_DEG of an element of the group."""
    cos = (np.einsum("gij,hij->hg", np.asarray(group_Gx3x3), np.asarray(rotations_Hx3x3)) - 1) / 2
    return bool(np.all(cos.max(axis=1) >= np.cos(np.radians(MERGE_DEG))))


def _frame(z: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """A rotation taking the z axis to ``z`` (and the x axis to ``x``'s part perpendicular to it)."""
    z = z / np.linalg.norm(z)
    if x is None or np.linalg.norm(np.cross(z, x)) < 1e-6:
        x = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = x - (x @ z) * z
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def _judge(cloud: _Cloud, name: str, Q: np.ndarray) -> Candidate:
    """Group ``name`` turned by Q (its frame's z axis to Q's third column) scored on the cloud."""
    elements = np.einsum("ij,gjk,lk->gil", Q, group_rotations(name), Q)
    d = _distances(cloud.x_Nx3, cloud.tree, elements[1:])
    ratio = float(np.max(np.sqrt(np.mean(np.square(d), axis=1)))) / cloud.rms
    missed = float(np.mean(d > MISS * np.median(cloud.spacing_N)))
    return Candidate(name, len(elements), ratio, missed, ratio <= cloud.limit and missed <= 0.05, elements)


def _sample(x_Nx3: np.ndarray) -> np.ndarray:
    """At most REFINE_POINTS of the points, drawn evenly (a cloud may be ordered copy by copy)."""
    return (
        x_Nx3
        if len(x_Nx3) <= REFINE_POINTS
        else x_Nx3[np.random.default_rng(0).choice(len(x_Nx3), REFINE_POINTS, replace=False)]
    )


def _polished_axis(cloud: _Cloud, direction: np.ndarray, order: int) -> np.ndarray:
    """An axis moved (Nelder-Mead, within a few degrees) to where its n-fold rotation maps the cloud best:
    candidate directions come from points and midpoints, a few degrees off a true axis."""
    u, v = _frame(direction)[:, 0], _frame(direction)[:, 1]
    along = lambda p: _unit(direction + p[0] * u + p[1] * v)[0]
    cost = lambda p: float(
        np.mean(
            np.square(
                _distances(
                    cloud.x_Nx3, cloud.tree, Rotation.from_rotvec(along(p) * 2 * np.pi / order).as_matrix()[None]
                )
            )
        )
    )
    simplex = np.array([[0.0, 0.0], [0.05, 0.0], [0.0, 0.05]])
    found = minimize(cost, np.zeros(2), method="Nelder-Mead", options={"initial_simplex": simplex, "maxfev": 60})
    return along(found.x)


def _refined(cloud: _Cloud, candidate: Candidate, Q: np.ndarray) -> Candidate:
    """The candidate's orientation polished (Nelder-Mead over a small turn of Q, on the mean squared
    distance of every element's rotated points), kept when it scores better."""
    x = _sample(cloud.x_Nx3)
    group = group_rotations(candidate.name)[1:]

    def cost(turn: np.ndarray) -> float:
        P = Rotation.from_rotvec(turn).as_matrix() @ Q
        return float(np.mean(np.square(_distances(x, cloud.tree, P @ group @ P.T))))

    step = np.radians(2.0)
    simplex = np.concatenate([np.zeros((1, 3)), step * np.eye(3)])
    found = minimize(cost, np.zeros(3), method="Nelder-Mead", options={"initial_simplex": simplex, "maxfev": 80})
    polished = _judge(cloud, candidate.name, Rotation.from_rotvec(found.x).as_matrix() @ Q)
    return polished if polished.ratio < candidate.ratio else candidate


def _axes_of(name: str, order: int) -> np.ndarray:
    """The axes of a group's rotations of exactly this order, in its fixed frame (group_rotations)."""
    rv = Rotation.from_matrix(group_rotations(name)[1:]).as_rotvec()
    angles = np.linalg.norm(rv, axis=1)
    return _merge(_unit(rv[np.abs(angles - 2 * np.pi / order) < 1e-3]))


def rank(points_Nx3: np.ndarray, top_axes: int = 3) -> Ranking:
    """Score every candidate group (CANDIDATES) by how well it maps the cloud onto itself at its best
    orientation: Cn about the ``top_axes`` axes whose n-fold rotation holds best; Dn about the best Cn axis
    with its two-fold axes swept round it in 1 degree steps; T, O and I fitted to pairs of found axes at the
    right angle (and the principal frame). The trivial group C1 always holds."""
    cloud = _cloud(points_Nx3)
    trivial = Candidate("C1", 1, 0.0, 0.0, True, np.eye(3)[None])
    if cloud is None:
        return Ranking([trivial], 0.0, 0.0)
    by_order: dict[int, list[Axis]] = {}
    for a in sorted(cloud.scored, key=lambda a: a.ratio):
        by_order.setdefault(a.order, []).append(a)
    judged = []  # (candidate, its orientation)
    angles = np.radians(np.arange(0, 180, 1.0))
    best = lambda pairs: min(pairs, key=lambda pair: pair[0].ratio)
    sample = cloud._replace(x_Nx3=_sample(cloud.x_Nx3))
    plausible = lambda c: not c.holds and c.ratio < min(cloud.chance / 2, 2 * cloud.limit)
    for n in range(2, MAX_ORDER + 1):
        frames = [_frame(a.direction) for a in by_order[n][:top_axes]]
        cyclic, Q = best([(_judge(cloud, f"C{n}", F), F) for F in frames])
        if plausible(cyclic):  # a few degrees off can fail an axis that holds
            Q = _frame(_polished_axis(sample, Q[:, 2], n))
            cyclic, Q = best([(cyclic, Q), (_judge(cloud, f"C{n}", Q), Q)])
        across = np.outer(np.cos(angles), Q[:, 0]) + np.outer(np.sin(angles), Q[:, 1])
        flip = min(_score(cloud.x_Nx3, cloud.tree, cloud.spacing_N, across, [2]), key=lambda a: a.ratio)
        judged += [
            (cyclic, Q),
            (_judge(cloud, f"D{n}", _frame(Q[:, 2], flip.direction)), _frame(Q[:, 2], flip.direction)),
        ]
    # T, O and I: fitted to two found three-fold axes (every polyhedral group has them) at the angle of the
    # group's closest pair of three-fold axes, tried both ways round, scored on a sample, the best in full
    both = lambda m: np.concatenate([m, -m])  # direction triples, centred: kabsch's means are zero
    threefold = [_polished_axis(sample, a.direction, 3) for a in by_order[3][: 3 * top_axes]]
    for name in ("T", "O", "I"):
        a = _axes_of(name, 3)
        cos = np.abs(a[1:] @ a[0])
        a, b = a[0], a[1:][np.argmax(cos)]
        canonical, angle = np.stack([a, b, np.cross(a, b)]), np.degrees(np.arccos(np.clip(a @ b, -1, 1)))
        frames = [cloud.principal_3x3.T * np.sign(np.linalg.det(cloud.principal_3x3))]
        for i, u in enumerate(threefold):
            for v in threefold[i + 1 :]:
                v = v * np.sign(v @ u) * np.sign(a @ b)
                if abs(np.degrees(np.arccos(np.clip(u @ v, -1, 1))) - angle) < AXIS_TOLERANCE_DEG:
                    for p, q in ((u, v), (v, u)):
                        frames.append(metrics.kabsch(both(canonical), both(np.stack([p, q, np.cross(p, q)])))[0])
        Q = min(frames, key=lambda Q: _judge(sample, name, Q).ratio)
        judged.append((_judge(cloud, name, Q), Q))
    polyhedral = lambda c: c.name in ("T", "O", "I") and plausible(c)
    judged = [trivial] + [_refined(cloud, c, Q) if polyhedral(c) else c for c, Q in judged]
    ranked = sorted(judged, key=lambda c: (not c.holds, -c.order if c.holds else 0, c.ratio))
    return Ranking(ranked, cloud.chance, cloud.limit)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from holly_jax import plots, pointfile
    from holly_jax.errors import InputError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, not argparse's usage block
            raise SystemExit(f"error: {message} (usage: python -m holly_jax.symmetry CLOUD.ply [--picture PNG])")

    parser = Parser(
        prog="python -m holly_jax.symmetry",
        description="Rank every point group (C2..C16, D2..D16, T, O, I) by how well it maps a cloud onto itself.",
    )
    parser.add_argument("cloud", help="a point cloud: PLY or OBJ (a run's final.ply)")
    parser.add_argument("--picture", default=None, help="where the scores' picture goes (default CLOUD.symmetry.png)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        points = pointfile.read_points(args.cloud)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    ranking, found = rank(points), find(points)
    picture = args.picture or f"{args.cloud}.symmetry.png"
    try:
        plots.save_symmetry_scores(picture, ranking, title=args.cloud)
    except OSError as e:
        raise SystemExit(f"error: {picture}: cannot write the picture ({e.strerror or e})") from None
    print(f"{args.cloud}: {len(points)} points; a group holds at RMS <= {ranking.limit:.2f} point spacings")
    print(f"(rotations that are no symmetry give {ranking.chance:.2f})")
    print(ranking.table())
    best = ranking.best
    if best.order > 1:
        flag = f"--config.model.symmetry={best.name.lower()}"
        print(f"would impose {best.name}: {flag} (points.num a multiple of {best.order})")
    else:
        print("no symmetry holds: keep model.symmetry=c1")
    for a in found.near:
        print(f"near: {a.order}-fold about {np.round(a.direction, 3)}, {100 * a.missed:.0f}% of the points unmapped")
    print(f"picture: {picture}")


if __name__ == "__main__":
    main()
