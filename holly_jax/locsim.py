"""Simulated SMLM localisations of a 3D structure, written as Picasso HDF5 and ThunderSTORM CSV.

``python -m holly_jax.locsim OBJECT OUT_STEM``: particles at uniformly random poses; each structure point
labelled with some probability, blinking a Poisson number of times, each blink localised with Gaussian
error; uniform background localisations around each particle. The files open in Picasso
(``picasso.io.load_locs`` keeps every row) and pass its ThunderSTORM import.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from holly_jax import locs, pointfile
from holly_jax.errors import InputError


class Simulation(NamedTuple):
    locs: locs.Localisations
    is_background: np.ndarray  # per row
    truth_xy_nm: np.ndarray  # per row: the true projected position (NaN for background)
    rotations_Px3x3: np.ndarray  # each particle's pose: localisations = (R @ point)[:2] + centre


def simulate(
    points_Nx3: np.ndarray,
    num_particles: int,
    seed: int = 0,
    nm_per_unit: float = 50.0,
    labelling: float = 0.8,
    blinks: float = 4.0,
    precision_nm: float = 8.0,
    background: float = 5.0,
    field_nm: float = 200.0,
    photons: float = 1500.0,
    psf_nm: float = 130.0,
) -> Simulation:
    """Particles of a 3D structure at uniformly random poses, as localisations (nm).

    Each structure point is labelled with probability ``labelling``; a label blinks a Poisson(``blinks``)
    number of times; each blink is localised with Gaussian error of std ``precision_nm`` per axis; each
    particle gets Poisson(``background``) background localisations uniform over a square of side
    2 * ``field_nm`` around it. Particles sit on a grid of camera positions 4 * field_nm apart, the first
    at (2 * field_nm, 2 * field_nm), so that every coordinate of a structure smaller than the field is
    positive.
    """
    rng = np.random.default_rng(seed)
    pts = np.asarray(points_Nx3, np.float64) * nm_per_unit
    n = len(pts)
    R = Rotation.random(num_particles, random_state=rng).as_matrix()
    projected = np.einsum("pij,nj->pni", R, pts)[..., :2]  # P x N x 2, orthographic along z
    labelled = rng.uniform(size=(num_particles, n)) < labelling
    counts = rng.poisson(blinks, size=(num_particles, n)) * labelled
    p_idx, n_idx = np.nonzero(counts)
    reps = counts[p_idx, n_idx]
    p_idx, n_idx = np.repeat(p_idx, reps), np.repeat(n_idx, reps)
    truth = projected[p_idx, n_idx]
    signal = truth + rng.normal(0.0, precision_nm, truth.shape)
    n_bg = rng.poisson(background, num_particles)
    bg_p = np.repeat(np.arange(num_particles), n_bg)
    bg = rng.uniform(-field_nm, field_nm, (len(bg_p), 2))
    side = int(np.ceil(np.sqrt(num_particles)))
    grid = np.stack([np.arange(num_particles) % side, np.arange(num_particles) // side], 1)
    centres = field_nm * (2 + 4 * grid)
    group = np.concatenate([p_idx, bg_p])
    xy = np.concatenate([signal, bg]) + centres[group]
    m = len(group)
    table = locs.Localisations(
        xy[:, 0],
        xy[:, 1],
        group.astype(np.int64),
        rng.integers(0, 20000, m),
        rng.exponential(photons, m),
        np.full(m, precision_nm),
        np.full(m, psf_nm),
    )
    truth_all = np.concatenate([truth + centres[p_idx], np.full((len(bg_p), 2), np.nan)])
    is_bg = np.concatenate([np.zeros(len(p_idx), bool), np.ones(len(bg_p), bool)])
    return Simulation(table, is_bg, truth_all, R)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulate SMLM localisations of a 3D structure.")
    parser.add_argument("object", help="OBJ/PLY structure")
    parser.add_argument("out", help="output stem: writes STEM.csv (ThunderSTORM) and STEM.hdf5 + STEM.yaml (Picasso)")
    parser.add_argument("--particles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nm-per-unit", type=float, default=50.0, help="nm per object coordinate unit")
    parser.add_argument("--labelling", type=float, default=0.8, help="labelling efficiency")
    parser.add_argument("--blinks", type=float, default=4.0, help="mean blinks per fluorophore")
    parser.add_argument("--precision", type=float, default=8.0, help="localisation precision, nm")
    parser.add_argument("--background", type=float, default=5.0, help="mean background localisations per particle")
    parser.add_argument("--pixel", type=float, default=130.0, help="camera pixel size for the Picasso file, nm")
    args = parser.parse_args(argv)
    try:
        if args.particles < 1 or args.pixel <= 0 or args.nm_per_unit <= 0 or args.precision < 0:
            raise InputError(None, "--particles, --pixel and --nm-per-unit must be positive, --precision >= 0")
        sim = simulate(
            pointfile.read_points(args.object),
            args.particles,
            args.seed,
            args.nm_per_unit,
            args.labelling,
            args.blinks,
            args.precision,
            args.background,
        )
        if min(sim.locs.x_nm.min(), sim.locs.y_nm.min()) < 0:
            raise InputError(args.object, "the structure is larger than the 200 nm field: lower --nm-per-unit")
    except InputError as e:
        raise SystemExit(f"error: {e}")
    generated = f"holly-jax locsim ({args.object}, seed {args.seed}, {args.nm_per_unit} nm per unit)"
    locs.write_thunderstorm(f"{args.out}.csv", sim.locs)
    locs.write_picasso(f"{args.out}.hdf5", sim.locs, args.pixel, generated_by=generated)
    print(f"{len(sim.locs.x_nm)} localisations of {args.particles} particles: {args.out}.csv, {args.out}.hdf5")


if __name__ == "__main__":
    main()
