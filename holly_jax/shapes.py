"""Seeded generators of the example point sets shipped in `objs/`.

Scaled like the original's objects: every coordinate within [-1.8, 1.8], the largest
reaching about 1.5-1.8, a few hundred points each. Regenerate the files with

    python -m holly_jax.shapes objs/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from holly_jax.pointfile import write_points

_CLIP = 2.5  # normal samples are clipped at 2.5 sigma so the bounds above always hold


def _blob(rng: np.random.Generator, n: int, sigmas: tuple[float, float, float]) -> np.ndarray:
    """n points of a clipped axis-aligned Gaussian with the given per-axis sigmas, (n, 3)."""
    return np.clip(rng.standard_normal((n, 3)), -_CLIP, _CLIP) * np.asarray(sigmas)


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _split(n_points: int, parts: int) -> list[int]:
    """n_points shared as evenly as possible over `parts` groups."""
    if n_points < parts:
        raise ValueError(f"need at least {parts} points, got {n_points}")
    return [len(a) for a in np.array_split(np.arange(n_points), parts)]


def cep152_toroid(n_points: int = 243, seed: int = 0, radius: float = 1.25) -> np.ndarray:
    """A CEP152-like 9-fold ring: 9 elongated blobs around a circle in the xy-plane, (N, 3).

    Each blob is stretched along a direction tilted 45 degrees between radial and
    tangential (a pinwheel, as centriole blades lean), with a little thickness in z.
    Blobs are sampled independently, so the symmetry holds in distribution, not exactly.
    """
    rng = np.random.default_rng(seed)
    tilt = _rot_z(np.pi / 4)  # long axis along x, turned 45 degrees towards the tangent
    clusters = []
    for k, n in enumerate(_split(n_points, 9)):
        local = _blob(rng, n, (0.17, 0.045, 0.07)) @ tilt.T + np.array([radius, 0.0, 0.0])
        clusters.append(local @ _rot_z(2 * np.pi * k / 9).T)
    return np.concatenate(clusters).astype(np.float32)


def nuclear_pore(n_points: int = 256, seed: int = 0, radius: float = 1.3, half_height: float = 0.35) -> np.ndarray:
    """A nuclear-pore-like 8-fold double ring: 8 subunits at z = +h and 8 at z = -h, (N, 3)."""
    rng = np.random.default_rng(seed)
    clusters = []
    for k, n in enumerate(_split(n_points, 16)):
        z = half_height if k < 8 else -half_height
        local = _blob(rng, n, (0.09, 0.06, 0.05)) + np.array([radius, 0.0, z])
        clusters.append(local @ _rot_z(2 * np.pi * (k % 8) / 8).T)
    return np.concatenate(clusters).astype(np.float32)


def asymmetric_shape(n_points: int = 260, seed: int = 0) -> np.ndarray:
    """A chiral shape with no rotational or mirror symmetry, so a pose is unique, (N, 3).

    A left-handed helical tube of 1.2 turns (chiral; its own two-fold axis is broken by
    the parts below), a ball-shaped knob off the helix near one end and a thin fin
    beside the middle, of clearly different sizes. Centred, max |coordinate| = 1.6.
    """
    if n_points < 30:
        raise ValueError(f"need at least 30 points, got {n_points}")
    rng = np.random.default_rng(seed)
    n_knob, n_fin = round(0.22 * n_points), round(0.2 * n_points)
    n_tube = n_points - n_knob - n_fin

    # Helix segment: 1.2 turns, points spread evenly along it with tube noise.
    t_end = 2.4 * np.pi
    t = np.sort(rng.uniform(0.0, t_end, n_tube))
    centre = np.stack([0.8 * np.cos(t), -0.8 * np.sin(t), 0.22 * (t - t_end / 2)], axis=1)
    tube = centre + _blob(rng, n_tube, (0.04, 0.04, 0.04))

    # Knob: a ball of radius ~0.3 off the helix, outside and above its start.
    knob = _blob(rng, n_knob, (0.13, 0.13, 0.13)) + np.array([1.25, 0.35, -0.55])

    # Fin: a thin triangle spanned from the helix middle towards the axis and up.
    u, v = rng.uniform(size=(2, n_fin))
    flip = u + v > 1.0  # fold the unit square onto the triangle u + v <= 1
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    base = np.array([-0.75, -0.3, 0.0])
    fin = base + np.outer(u, [0.55, 0.15, 0.0]) + np.outer(v, [0.05, 0.1, 0.7])
    fin += _blob(rng, n_fin, (0.015, 0.015, 0.015))

    points = np.concatenate([tube, knob, fin])
    points -= points.mean(axis=0)
    points *= 1.6 / np.abs(points).max()
    return points.astype(np.float32)


def propeller_knob(n_points: int = 240, seed: int = 0, n_knob: int = 16) -> np.ndarray:
    """A 3-fold propeller that one small knob makes asymmetric, (N, 3): symmetric but for one feature.

    Three curved blades (each a chain of blobs sweeping 70 degrees around z while it leaves the centre, and
    rising as it goes, so the propeller is chiral), 120 degrees apart, around a small hub; the last
    ``n_knob`` points are a ball on the first blade's tip, above the plane. Without the knob the shape is C3:
    turns of 120 degrees about z are its near-symmetries, where poses go wrong.
    """
    if n_points < 30 + n_knob:
        raise ValueError(f"need at least {30 + n_knob} points, got {n_points}")
    rng = np.random.default_rng(seed)
    n_hub = round(0.1 * n_points)
    hub = _blob(rng, n_hub, (0.18, 0.18, 0.08))
    blades = []
    for k, n in enumerate(_split(n_points - n_knob - n_hub, 3)):
        s = np.sort(rng.uniform(0.0, 1.0, n))  # position along the blade, centre to tip
        angle = np.radians(70.0) * s
        r = 0.3 + 1.05 * s
        centre = np.stack([r * np.cos(angle), r * np.sin(angle), 0.25 * s], axis=1)
        blade = centre + _blob(rng, n, (0.07, 0.07, 0.035)) * (1.0 + s)[:, None]
        blades.append(blade @ _rot_z(2 * np.pi * k / 3).T)
    tip = np.array([1.35 * np.cos(np.radians(70.0)), 1.35 * np.sin(np.radians(70.0)), 0.25])
    knob = _blob(rng, n_knob, (0.07, 0.07, 0.07)) + tip + np.array([0.0, 0.0, 0.3])
    points = np.concatenate([hub, *blades, knob])
    points -= points[:-n_knob].mean(axis=0)  # the symmetric part centred: its axis stays z
    points *= 1.6 / np.abs(points).max()
    return points.astype(np.float32)


def lobes(n_points: int = 250, seed: int = 0) -> np.ndarray:
    """An irregular asymmetric shape, (N, 3): five ellipsoidal lobes of different sizes, elongations and
    orientations, at seeded random places within the bounds (no rotation maps it onto itself)."""
    if n_points < 25:
        raise ValueError(f"need at least 25 points, got {n_points}")
    rng = np.random.default_rng(seed)
    shares = np.array([0.32, 0.24, 0.18, 0.14, 0.12])
    counts = np.round(shares * n_points).astype(int)
    counts[0] += n_points - counts.sum()
    sizes = np.array([0.32, 0.26, 0.2, 0.16, 0.12])
    parts = []
    for n, size in zip(counts, sizes):
        axes = size * np.array([1.6, 0.8, 0.5]) * rng.uniform(0.8, 1.2, 3)
        q = np.linalg.qr(rng.standard_normal((3, 3)))[0]  # a random orientation
        centre = rng.uniform(-1.0, 1.0, 3)
        parts.append(_blob(rng, n, tuple(axes)) @ q.T + centre)
    points = np.concatenate(parts)
    points -= points.mean(axis=0)
    points *= 1.6 / np.abs(points).max()
    return points.astype(np.float32)


def branched(n_points: int = 240, seed: int = 0) -> np.ndarray:
    """An irregular asymmetric shape of parts of every dimension, (N, 3): a rod bent at 110 degrees with a
    shorter side branch leaving its elbow out of plane (1D), a tilted rectangular plate across one end (2D)
    and an egg-shaped blob off the other (3D). No rotation maps it onto itself (nor most of it), and it is
    not only a thin curve."""
    if n_points < 40:
        raise ValueError(f"need at least 40 points, got {n_points}")
    rng = np.random.default_rng(seed)
    counts = np.round(np.array([0.3, 0.14, 0.3, 0.26]) * n_points).astype(int)
    counts[0] += n_points - counts.sum()
    n_rods, n_branch, n_plate, n_ball = counts

    def rod(start, end, n, width):
        s = rng.uniform(0.0, 1.0, n)[:, None]
        return start + s * (np.asarray(end) - start) + _blob(rng, n, (width, width, width))

    elbow = np.zeros(3)
    a_end = np.array([1.3, 0.0, 0.0])
    b_end = 1.1 * np.array([np.cos(np.radians(110.0)), np.sin(np.radians(110.0)), 0.0])
    n_a = n_rods // 2
    rods = np.concatenate([rod(elbow, a_end, n_a, 0.035), rod(elbow, b_end, n_rods - n_a, 0.035)])
    branch = rod(elbow, np.array([-0.25, -0.35, 0.75]), n_branch, 0.03)
    # plate: a 0.9 x 0.45 rectangle across the end of rod a, tilted out of the rods' plane
    u, v = rng.uniform(-0.5, 0.5, (2, n_plate))
    sheet = np.stack([0.02 * rng.standard_normal(n_plate), 0.9 * u, 0.45 * v], axis=1)
    tilt = np.linalg.qr(np.array([[1.0, 0.5, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T)[0]
    plate = sheet @ tilt.T + a_end + np.array([0.1, 0.0, 0.15])
    # an egg-shaped blob off the end of rod b
    ball = _blob(rng, n_ball, (0.2, 0.12, 0.09)) + b_end + np.array([-0.15, 0.2, -0.3])
    points = np.concatenate([rods, branch, plate, ball])
    points -= points.mean(axis=0)
    points *= 1.6 / np.abs(points).max()
    return points.astype(np.float32)


SHAPES = {
    "cep152_toroid": cep152_toroid,
    "nuclear_pore": nuclear_pore,
    "asymmetric": asymmetric_shape,
    "propeller_knob": propeller_knob,
    "lobes": lobes,
    "branched": branched,
}
# Shapes with one small feature that breaks their symmetry: how many of the file's last points it is
FEATURES = {"propeller_knob": 16}


def main(argv: list[str] | None = None) -> None:
    """Writes <name>.obj and <name>.ply for every shape into the folder given (default objs/)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1:
        raise SystemExit("usage: python -m holly_jax.shapes [OUTPUT_DIR]")
    out = Path(argv[0] if argv else "objs")
    for name, make in SHAPES.items():
        points_Nx3 = make()
        for suffix in (".obj", ".ply"):
            write_points(out / f"{name}{suffix}", points_Nx3)
        print(f"wrote {out / name}.obj and .ply ({len(points_Nx3)} points)")


if __name__ == "__main__":
    main()
