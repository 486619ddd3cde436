"""Raw SMLM localisation tables as particles, and a localisation simulator.

Formats read and written:
- ThunderSTORM CSV: columns ``x [nm]``, ``y [nm]`` (required), ``sigma [nm]``, ``intensity [photon]``,
  ``frame`` (optional), and ``group`` (optional: the particle; without it the file is one particle).
- Picasso HDF5: a ``locs`` table with ``x``, ``y`` (camera pixels), ``lpx``, ``lpy``, ``photons``,
  ``frame`` and ``group`` (picked particles), and its YAML sidecar (same name, ``.yaml``) giving the
  camera ``Pixelsize`` in nm.

Each particle becomes a training image drawn on the fly (see ``data.py``): its
localisations centred on their mean, rotated by a random in-plane angle, and
splatted at the schedule's sigma with a render pixel size in nm. This replaces
the original's separate pre-render step.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from holly_jax import pointfile
from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError

CSV_X, CSV_Y = "x [nm]", "y [nm]"


class Localisations(NamedTuple):
    """One row per detected blink, in nm."""

    x_nm: np.ndarray
    y_nm: np.ndarray
    group: np.ndarray  # int particle id per row
    frame: np.ndarray
    photons: np.ndarray
    precision_nm: np.ndarray


class Particles(NamedTuple):
    """Particles padded to the largest: localisations in nm about each particle's mean, and a 0/1 mask."""

    xy_PxLx2: np.ndarray
    mask_PxL: np.ndarray
    groups: np.ndarray


def read(path: str | os.PathLike) -> Localisations:
    """A localisation file by its suffix: .csv (ThunderSTORM) or .hdf5/.h5 (Picasso)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_thunderstorm(path)
    if suffix in (".hdf5", ".h5"):
        return read_picasso(path)
    raise InputError(path, f"unsupported localisation file type '{suffix}' (use .csv or .hdf5)")


def read_thunderstorm(path: str | os.PathLike) -> Localisations:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read CSV ({e.__class__.__name__})") from None
    if not rows:
        raise InputError(path, "empty file")
    header = [h.strip().strip('"') for h in rows[0]]
    for column in (CSV_X, CSV_Y):
        if column not in header:
            raise InputError(path, f"missing column '{column}' (columns: {', '.join(header)})")
    body = [r for r in rows[1:] if r]
    if not body:
        raise InputError(path, "no localisations")
    try:
        table = np.asarray(body, dtype=np.float64)
    except ValueError:
        raise InputError(path, "non-numeric or ragged rows") from None
    if table.shape[1] != len(header):
        raise InputError(path, f"rows have {table.shape[1]} fields, the header {len(header)}")
    col = lambda name, default: table[:, header.index(name)] if name in header else np.full(len(table), default)
    x, y = col(CSV_X, 0.0), col(CSV_Y, 0.0)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(path, "non-finite coordinates (NaN or inf)")
    return Localisations(
        x,
        y,
        col("group", 0).astype(np.int64),
        col("frame", 0).astype(np.int64),
        col("intensity [photon]", 0.0),
        col("sigma [nm]", 0.0),
    )


def read_picasso(path: str | os.PathLike, pixel_nm: float | None = None) -> Localisations:
    """Picasso locs; the camera pixel size comes from the YAML sidecar unless given."""
    import h5py  # only this format needs it

    try:
        with h5py.File(path, "r") as f:
            if "locs" not in f:
                raise InputError(path, f"no 'locs' table (has: {', '.join(f.keys()) or 'nothing'})")
            locs = f["locs"][...]
    except OSError as e:
        raise InputError(path, f"not a readable HDF5 file ({' '.join(str(e).split())[:100]})") from None
    names = locs.dtype.names or ()
    for column in ("x", "y"):
        if column not in names:
            raise InputError(path, f"'locs' table has no '{column}' column")
    if len(locs) == 0:
        raise InputError(path, "no localisations")
    if pixel_nm is None:
        pixel_nm = picasso_pixel_nm(Path(path).with_suffix(".yaml"))
    get = lambda name, default: locs[name] if name in names else np.full(len(locs), default)
    x, y = get("x", 0.0).astype(np.float64) * pixel_nm, get("y", 0.0).astype(np.float64) * pixel_nm
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(path, "non-finite coordinates (NaN or inf)")
    return Localisations(
        x,
        y,
        get("group", 0).astype(np.int64),
        get("frame", 0).astype(np.int64),
        get("photons", 0.0).astype(np.float64),
        get("lpx", 0.0).astype(np.float64) * pixel_nm,
    )


def picasso_pixel_nm(yaml_path: Path) -> float:
    import yaml

    if not yaml_path.exists():
        raise InputError(yaml_path, "Picasso YAML sidecar not found (it gives the camera pixel size)")
    try:
        documents = list(yaml.safe_load_all(yaml_path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise InputError(yaml_path, "not readable YAML") from None
    for doc in documents:
        if isinstance(doc, dict) and "Pixelsize" in doc:
            value = float(doc["Pixelsize"])
            if value > 0:
                return value
    raise InputError(yaml_path, "no positive 'Pixelsize' entry")


def particles(locs: Localisations, source: str | os.PathLike | None = None, max_locs: int = 4096) -> Particles:
    """Group localisations by particle, centre each on its mean, pad to the largest particle."""
    groups, inverse, counts = np.unique(locs.group, return_inverse=True, return_counts=True)
    if len(groups) == 0 or counts.min() == 0:
        raise InputError(source, "a particle (group) has no localisations")
    width = int(min(counts.max(), max_locs))
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, counts)  # position of each row within its particle
    keep = rank < width
    rows, cols = inverse[order][keep], rank[keep]
    xy = np.zeros((len(groups), width, 2), np.float32)
    mask = np.zeros((len(groups), width), np.float32)
    xy[rows, cols, 0] = locs.x_nm[order][keep]
    xy[rows, cols, 1] = locs.y_nm[order][keep]
    mask[rows, cols] = 1.0
    centre = (xy * mask[..., None]).sum(1) / mask.sum(1)[:, None]
    return Particles((xy - centre[:, None, :]) * mask[..., None], mask, groups)


# ----------------------------------------------------------------------------- simulation


class Simulation(NamedTuple):
    locs: Localisations
    is_background: np.ndarray  # per row
    truth_xy_nm: np.ndarray  # per row: the true projected position (NaN for background)


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
) -> Simulation:
    """Particles of a 3D structure at uniformly random poses, as localisations (nm).

    Each structure point is labelled with probability ``labelling``; a label blinks a Poisson(``blinks``)
    number of times; each blink is localised with Gaussian error of std ``precision_nm`` per axis; each
    particle gets Poisson(``background``) background localisations uniform over a square of side
    2 * ``field_nm`` around it. Particles sit on a grid of camera positions, 4 * field_nm apart.
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
    centres = 4 * field_nm * np.stack([np.arange(num_particles) % side, np.arange(num_particles) // side], 1)
    group = np.concatenate([p_idx, bg_p])
    xy = np.concatenate([signal, bg]) + centres[group]
    m = len(group)
    locs = Localisations(
        xy[:, 0],
        xy[:, 1],
        group.astype(np.int64),
        rng.integers(0, 20000, m),
        rng.exponential(photons, m),
        np.full(m, precision_nm),
    )
    truth_all = np.concatenate([truth + centres[p_idx], np.full((len(bg_p), 2), np.nan)])
    return Simulation(locs, np.concatenate([np.zeros(len(p_idx), bool), np.ones(len(bg_p), bool)]), truth_all)


def write_thunderstorm(path: str | os.PathLike, locs: Localisations) -> None:
    buf = io.StringIO()
    buf.write('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","group"\n')
    for i, row in enumerate(zip(locs.frame, locs.x_nm, locs.y_nm, locs.precision_nm, locs.photons, locs.group)):
        buf.write(f"{i + 1},{row[0]},{row[1]:.3f},{row[2]:.3f},{row[3]:.3f},{row[4]:.1f},{row[5]}\n")
    write_atomic(path, buf.getvalue().encode())


def write_picasso(path: str | os.PathLike, locs: Localisations, pixel_nm: float = 130.0) -> None:
    """A Picasso-style HDF5 ``locs`` table (camera pixels) and its YAML sidecar."""
    import h5py
    import yaml

    dtype = [
        ("frame", "u4"),
        ("x", "f4"),
        ("y", "f4"),
        ("photons", "f4"),
        ("lpx", "f4"),
        ("lpy", "f4"),
        ("group", "i4"),
    ]
    table = np.zeros(len(locs.x_nm), dtype)
    table["frame"], table["x"], table["y"] = locs.frame, locs.x_nm / pixel_nm, locs.y_nm / pixel_nm
    table["photons"], table["group"] = locs.photons, locs.group
    table["lpx"] = table["lpy"] = locs.precision_nm / pixel_nm
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("locs", data=table)
    write_atomic(path, buf.getvalue())
    sidecar = {"Generated by": "holly-jax localisation simulator", "Pixelsize": float(pixel_nm)}
    write_atomic(Path(path).with_suffix(".yaml"), yaml.safe_dump(sidecar).encode())


def main(argv: list[str] | None = None) -> None:
    """``python -m holly_jax.locs OBJECT OUT_STEM``: simulate particles, write OUT_STEM.csv and OUT_STEM.hdf5."""
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
    args = parser.parse_args(argv)
    try:
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
    except InputError as e:
        raise SystemExit(f"error: {e}")
    write_thunderstorm(f"{args.out}.csv", sim.locs)
    write_picasso(f"{args.out}.hdf5", sim.locs)
    print(f"{len(sim.locs.x_nm)} localisations of {args.particles} particles: {args.out}.csv, {args.out}.hdf5")


if __name__ == "__main__":
    main()
