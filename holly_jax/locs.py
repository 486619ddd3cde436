"""Localisation tables in nm: ThunderSTORM CSV and Picasso HDF5, read and written; particles from them.

ThunderSTORM CSV (also what Picasso's ``export_thunderstorm``, locan, SMAP and DECODE write): columns by
name, read with pandas. ``x [nm]``, ``y [nm]`` (or ``[um]``/``[µm]``) are required. The localisation
precision is ``uncertainty_xy [nm]`` (older files: ``uncertainty [nm]``); ``sigma [nm]`` (or the mean of
``sigma1 [nm]``, ``sigma2 [nm]``) is the PSF width, kept apart. The particle is ``group`` or locan's
``cluster_label``. ``z [nm]`` is noted and ignored: training uses 2D projections.

Picasso HDF5: a ``locs`` table (h5py compound, as ``picasso.io.save_locs`` writes, or a pandas
``to_hdf`` table) with ``x``, ``y``, ``lpx``, ``lpy``, ``sx``, ``sy`` in camera pixels, ``photons``,
``frame``, ``group`` (picked particles) and, in 3D files, ``z`` in nm. The camera pixel size is the
metadata's ``Pixelsize``: the YAML sidecar (same name, ``.yaml``; several parts, one per processing step,
the last part's value winning) or, without one, the JSON ``metadata`` dataset Picasso 0.11 embeds. The
YAML is read safely: numpy-tagged values (which Picasso writes) are decoded as data, never run.

A file without a group column is one particle only where its localisations span at most
``MAX_PARTICLE_NM`` or the caller says so (``one_particle``); otherwise it is an error saying how to pick
or cluster. Rows with a negative group (locan's noise label) are dropped.

Writers produce files the real tools accept: ``write_picasso`` the dtypes and metadata keys Picasso
requires (``Width``, ``Height``, ``Frames``, ``Pixelsize``), coordinates non-negative; ``write_thunderstorm``
every column Picasso's ``import_ts`` asks for, in ThunderSTORM's names.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

MAX_PARTICLE_NM = 1000.0  # a file with no group column spanning more than this holds several particles
_UNITS = {"nm": 1.0, "um": 1000.0, "µm": 1000.0}  # ThunderSTORM coordinate units we convert
_PRECISION = ("uncertainty_xy [nm]", "uncertainty [nm]")
_GROUP = ("group", "cluster_label")
PICK_HINT = (
    "pick particles in Picasso (Render: Pick, then Save picked localizations) or cluster them "
    "(locan or DBSCAN, giving a 'cluster_label' column), or set data.one_particle=True"
)


class Localisations(NamedTuple):
    """One row per localisation, in nm; NaN where the file does not say."""

    x_nm: np.ndarray
    y_nm: np.ndarray
    group: np.ndarray  # int particle id per row
    frame: np.ndarray
    photons: np.ndarray
    precision_nm: np.ndarray
    psf_nm: np.ndarray


class Particles(NamedTuple):
    """Particles padded to the largest: localisations in nm about each particle's mean, and a 0/1 mask."""

    xy_PxLx2: np.ndarray
    mask_PxL: np.ndarray
    groups: np.ndarray  # the file's group id of each particle


def note(path: str | os.PathLike, message: str) -> None:
    """A one-line warning about an input file."""
    print(f"warning: {os.fsdecode(path)}: {message}", file=sys.stderr)


def read(path: str | os.PathLike, one_particle: bool = False, file_type: str = "") -> Localisations:
    """A localisation file by its suffix: .csv (ThunderSTORM) or .hdf5/.h5 (Picasso); ``file_type`` (or the
    suffix .smlm) names a format locan reads instead (``LOCAN_TYPES``; needs ``pip install locan``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if file_type or suffix == ".smlm":
        table = read_with_locan(path, file_type or "smlm")
    elif suffix == ".csv":
        table = read_thunderstorm(path)
    elif suffix in (".hdf5", ".h5"):
        table = read_picasso(path)
    else:
        raise InputError(
            path,
            f"unsupported localisation file type '{suffix}' (use .csv or .hdf5, or name a format locan reads: "
            f"data.file_type = {' | '.join(LOCAN_TYPES)})",
        )
    return with_groups(path, table, one_particle)


def _float(values, n: int) -> np.ndarray:
    return np.full(n, np.nan) if values is None else np.asarray(values, np.float64)


def mean_of(table, names: tuple[str, ...]) -> np.ndarray | None:
    """The mean of those columns of a table (a dict or DataFrame) it has; None when it has none."""
    present = [np.asarray(table[c], np.float64) for c in names if c in table]
    return np.mean(present, axis=0) if present else None


def with_groups(path: Path, t: dict, one_particle: bool) -> Localisations:
    """Localisations from a reader's columns (nm; None where absent), grouped into particles."""
    x, y = np.asarray(t["x"], np.float64), np.asarray(t["y"], np.float64)
    n = len(x)
    if n == 0:
        raise InputError(path, "no localisations")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(path, "non-finite coordinates (NaN or inf)")
    if t["group"] is None or one_particle:
        span = max(np.ptp(x), np.ptp(y))
        if not one_particle and span > MAX_PARTICLE_NM:
            raise InputError(
                path,
                f"no group column, and the localisations span {span / 1000:.1f} µm (several particles?): {PICK_HINT}",
            )
        group = np.zeros(n, np.int64)
    else:
        group = np.asarray(t["group"])
        if not np.isfinite(group).all() or (group != np.round(group)).any():
            raise InputError(path, "group ids must be whole numbers")
        group = group.astype(np.int64)
    keep = group >= 0
    if not keep.all():
        note(path, f"{int((~keep).sum())} localisations with a negative group id (noise) dropped")
        if not keep.any():
            raise InputError(path, "every localisation has a negative group id (noise): no particles")
    frame = np.zeros(n, np.int64) if t["frame"] is None else np.asarray(t["frame"]).astype(np.int64)
    cols = (x, y, group, frame, _float(t["photons"], n), _float(t["precision"], n), _float(t["psf"], n))
    return Localisations(*(c[keep] for c in cols))


# ----------------------------------------------------------------------------- other formats, through locan

LOCAN_TYPES = ("rapidstorm", "elyra", "smap", "decode", "smlm", "nanoimager", "thunderstorm")


def read_with_locan(path: Path, file_type: str) -> dict:
    """A file in one of ``LOCAN_TYPES``, read by locan (an optional extra: ``pip install locan``)."""
    if file_type.lower() not in LOCAN_TYPES:
        raise InputError(path, f"unknown file type '{file_type}' (locan reads: {', '.join(LOCAN_TYPES)})")
    try:
        import locan
    except ImportError:
        raise InputError(path, f"reading a {file_type} file needs locan: pip install locan") from None
    try:
        frame = locan.load_locdata(path, file_type=getattr(locan.FileType, file_type.upper())).data
    except Exception as e:  # locan's parsers raise many kinds; each is a bad file for us
        raise InputError(path, f"locan could not read it as {file_type} ({e.__class__.__name__})") from None
    return from_locan(path, frame)


def from_locan(path: Path, frame: pd.DataFrame) -> dict:
    """Columns of a locan LocData table (locan's property names; coordinates in nm) as a reader's dict."""
    for column in ("position_x", "position_y"):
        if column not in frame:
            raise InputError(path, f"locan found no '{column}' (columns: {', '.join(frame.columns)})")
    if "position_z" in frame:
        note(path, "'position_z' ignored: training uses the 2D projections")
    precision = ("uncertainty",) if "uncertainty" in frame else ("uncertainty_x", "uncertainty_y")
    psf = ("psf_sigma",) if "psf_sigma" in frame else ("psf_sigma_x", "psf_sigma_y")
    get = lambda c: frame[c].to_numpy() if c in frame else None
    return {
        "x": frame["position_x"].to_numpy(np.float64),
        "y": frame["position_y"].to_numpy(np.float64),
        "group": get("cluster_label"),
        "frame": get("frame"),
        "photons": get("intensity"),
        "precision": mean_of(frame, precision),
        "psf": mean_of(frame, psf),
    }


# ----------------------------------------------------------------------------- ThunderSTORM


def read_thunderstorm(path: Path) -> dict:
    import pandas as pd  # imported by the readers that use it: every launch starts sooner

    try:
        header = [c.strip() for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise InputError(path, f"not a readable CSV ({e.__class__.__name__})") from None
    unit = next((u for u in _UNITS if f"x [{u}]" in header and f"y [{u}]" in header), None)
    if unit is None:
        if "x [px]" in header:
            raise InputError(path, "coordinates in camera pixels ('x [px]'): export from ThunderSTORM in nm")
        raise InputError(path, f"missing column 'x [nm]' or 'y [nm]' (columns: {', '.join(header)})")
    precision = next((c for c in _PRECISION if c in header), None)
    psf = [c for c in ("sigma [nm]", "sigma1 [nm]", "sigma2 [nm]") if c in header]
    psf = psf[:1] if "sigma [nm]" in psf else psf
    group = next((c for c in _GROUP if c in header), None)
    wanted = [f"x [{unit}]", f"y [{unit}]", precision, *psf, group, "frame", "intensity [photon]"]
    wanted = [c for c in wanted if c is not None and c in header]
    try:
        # float64 for every column: pandas' own parser, a few bytes per value
        df = pd.read_csv(
            path, usecols=lambda c: c.strip() in wanted, dtype=np.float64, skipinitialspace=True, index_col=False
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        reason = "non-numeric or ragged rows" if isinstance(e, (ValueError, pd.errors.ParserError)) else "unreadable"
        raise InputError(path, f"{reason} ({' '.join(str(e).split())[:80]})") from None
    df.columns = [c.strip() for c in df.columns]
    if "z [nm]" in header:
        note(path, "'z [nm]' ignored: training uses the 2D projections")
    scale = _UNITS[unit]
    col = lambda name: None if name is None or name not in df else df[name].to_numpy()
    return {
        "x": df[f"x [{unit}]"].to_numpy() * scale,
        "y": df[f"y [{unit}]"].to_numpy() * scale,
        "group": col(group),
        "frame": col("frame"),
        "photons": col("intensity [photon]"),
        "precision": col(precision),
        "psf": mean_of(df, tuple(psf)),
    }


THUNDERSTORM_COLUMNS = [
    "id",
    "frame",
    "x [nm]",
    "y [nm]",
    "sigma [nm]",
    "intensity [photon]",
    "offset [photon]",
    "bkgstd [photon]",
    "uncertainty_xy [nm]",
    "group",
]


def write_thunderstorm(path: str | os.PathLike, locs: Localisations) -> None:
    """A ThunderSTORM CSV with every column Picasso's ``import_ts`` requires (unknown background: 0)."""
    import pandas as pd

    n = len(locs.x_nm)
    df = pd.DataFrame(
        {
            "id": np.arange(1, n + 1),
            "frame": locs.frame,
            "x [nm]": locs.x_nm,
            "y [nm]": locs.y_nm,
            "sigma [nm]": np.nan_to_num(locs.psf_nm),
            "intensity [photon]": np.nan_to_num(locs.photons),
            "offset [photon]": np.zeros(n),
            "bkgstd [photon]": np.zeros(n),
            "uncertainty_xy [nm]": np.nan_to_num(locs.precision_nm),
            "group": locs.group,
        },
        columns=THUNDERSTORM_COLUMNS,
    )
    write_atomic(path, df.to_csv(index=False, float_format="%.3f").encode())


# ----------------------------------------------------------------------------- Picasso


def read_picasso(path: Path) -> dict:
    import h5py  # only this format needs it

    try:
        with h5py.File(path, "r") as f:
            if "locs" not in f:
                raise InputError(path, f"no 'locs' table (has: {', '.join(f.keys()) or 'nothing'})")
            node = f["locs"]
            embedded = f["metadata"][()] if isinstance(f.get("metadata"), h5py.Dataset) else None
            if isinstance(node, h5py.Dataset) and node.dtype.names:
                names = node.dtype.names
                wanted = [c for c in ("x", "y", "lpx", "lpy", "sx", "sy", "photons", "frame", "group") if c in names]
                if "x" not in names or "y" not in names:
                    raise InputError(path, f"'locs' table has no '{'x' if 'x' not in names else 'y'}' column")
                block = node.fields(wanted)[...]  # one pass over the file, only the columns used
                table = {c: block[c] for c in wanted}
            else:
                table = None  # not h5py's compound layout: pandas' (PyTables) layout
    except OSError as e:
        raise InputError(path, f"not a readable HDF5 file ({' '.join(str(e).split())[:100]})") from None
    if table is None:
        table = _read_pandas_locs(path)
        names = tuple(table)
    if "z" in names:
        note(path, "'z' ignored: training uses the 2D projections")
    pixel_nm = picasso_pixel_nm(path, embedded)
    in_nm = lambda columns: None if (mean := mean_of(table, columns)) is None else mean * pixel_nm
    return {
        "x": in_nm(("x",)),
        "y": in_nm(("y",)),
        "group": table.get("group"),
        "frame": table.get("frame"),
        "photons": table.get("photons"),
        "precision": in_nm(("lpx", "lpy")),
        "psf": in_nm(("sx", "sy")),
    }


def _read_pandas_locs(path: Path) -> dict:
    """A ``locs`` table written by pandas ``to_hdf`` (PyTables layout)."""
    import pandas as pd

    try:
        df = pd.read_hdf(path, key="locs")
    except (ImportError, ValueError, TypeError, KeyError, OSError) as e:
        raise InputError(
            path, f"'locs' is neither a Picasso table nor a pandas table ({e.__class__.__name__})"
        ) from None
    if not isinstance(df, pd.DataFrame):
        raise InputError(path, "'locs' is not a table")
    for column in ("x", "y"):
        if column not in df:
            raise InputError(path, f"'locs' table has no '{column}' column")
    return {c: df[c].to_numpy() for c in df.columns}


def metadata_parts(yaml_path: Path) -> list:
    """The parts of a Picasso YAML sidecar, numpy-tagged values decoded as plain numbers."""
    import yaml

    try:
        return [p for p in yaml.load_all(yaml_path.read_text(encoding="utf-8"), Loader=_PicassoLoader)]
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError):
        raise InputError(yaml_path, "not readable YAML") from None


def picasso_pixel_nm(path: Path, embedded: bytes | str | None = None) -> float:
    """The camera pixel size: the last metadata part with a ``Pixelsize`` wins (Picasso's convention)."""
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.exists():
        parts, where = metadata_parts(yaml_path), yaml_path
    elif embedded is not None:
        try:
            parts, where = json.loads(embedded), path
        except (ValueError, UnicodeDecodeError):
            raise InputError(path, "embedded 'metadata' is not readable JSON") from None
    else:
        raise InputError(yaml_path, "Picasso YAML sidecar not found (it gives the camera pixel size)")
    for part in reversed(parts if isinstance(parts, list) else [parts]):
        if isinstance(part, dict) and part.get("Pixelsize"):
            try:
                value = float(part["Pixelsize"])
            except (TypeError, ValueError):
                raise InputError(where, f"'Pixelsize' is not a number ({part['Pixelsize']!r})") from None
            if not (np.isfinite(value) and value > 0):
                raise InputError(where, f"'Pixelsize' must be positive, got {value}")
            return value
    raise InputError(where, "no 'Pixelsize' entry (the camera pixel size in nm)")


def _safe_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that reads Python/numpy tags as data: numpy scalars decoded, anything else as its
        plain mapping, sequence or string. Nothing is imported or called."""

    def dtype(loader, suffix, node):
        fields = loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else {}
        args, state = fields.get("args") or ["f8"], fields.get("state") or ()
        order = state[1] if len(state) > 1 and state[1] in "<>|=" else "<"
        return np.dtype(str(args[0])).newbyteorder(order)

    def apply(loader, suffix, node):
        if suffix.endswith("dtype"):
            return dtype(loader, suffix, node)
        if suffix.endswith("multiarray.scalar") and isinstance(node, yaml.SequenceNode):
            kind, raw = loader.construct_sequence(node, deep=True)[:2]
            if isinstance(kind, np.dtype) and isinstance(raw, bytes) and len(raw) == kind.itemsize:
                return np.frombuffer(raw, kind)[0].item()
        return plain(loader, suffix, node)

    def plain(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", apply)
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    Loader.add_multi_constructor("!", plain)
    return Loader


_PicassoLoader = _safe_loader()

PICASSO_DTYPE = [
    ("frame", "u4"),
    ("x", "f4"),
    ("y", "f4"),
    ("photons", "f4"),
    ("sx", "f4"),
    ("sy", "f4"),
    ("bg", "f4"),
    ("lpx", "f4"),
    ("lpy", "f4"),
    ("group", "i4"),
]


def write_picasso(
    path: str | os.PathLike,
    locs: Localisations,
    pixel_nm: float = 130.0,
    z_nm: np.ndarray | None = None,
    generated_by: str = "holly-jax",
) -> None:
    """A Picasso HDF5 ``locs`` table (camera pixels; ``z`` in nm where given) and its YAML sidecar, with
    the metadata embedded as Picasso 0.11 does. Coordinates must be non-negative (Picasso drops others)."""
    import h5py
    import yaml

    x, y = np.asarray(locs.x_nm) / pixel_nm, np.asarray(locs.y_nm) / pixel_nm
    if len(x) and (x.min() < 0 or y.min() < 0):
        raise ValueError("Picasso needs non-negative coordinates; shift the localisations first")
    dtype = PICASSO_DTYPE + ([("z", "f4"), ("lpz", "f4")] if z_nm is not None else [])
    table = np.zeros(len(x), dtype)
    table["frame"], table["x"], table["y"], table["group"] = locs.frame, x, y, locs.group
    table["photons"] = np.nan_to_num(locs.photons)
    table["sx"] = table["sy"] = np.nan_to_num(locs.psf_nm) / pixel_nm
    table["lpx"] = table["lpy"] = np.nan_to_num(locs.precision_nm) / pixel_nm
    if z_nm is not None:
        table["z"], table["lpz"] = z_nm, np.nan_to_num(locs.precision_nm)
    info = [
        {
            "Generated by": generated_by,
            "Width": int(np.ceil(x.max(initial=0))) + 1,
            "Height": int(np.ceil(y.max(initial=0))) + 1,
            "Frames": int(np.max(locs.frame, initial=0)) + 1,
            "Pixelsize": float(pixel_nm),
        }
    ]
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("locs", data=table)
        f.create_dataset("metadata", data=json.dumps(info))
    write_atomic(path, buf.getvalue())
    write_atomic(Path(path).with_suffix(".yaml"), yaml.safe_dump_all(info, sort_keys=False).encode())


# ----------------------------------------------------------------------------- particles


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


def auto_nm_per_unit(parts: Particles, radius_units: float = 1.25) -> float:
    """The scale at which the particles' 90th-percentile localisation radius is ``radius_units`` object
    units: the size of the bundled shapes (docs/method.md §7)."""
    r = np.linalg.norm(parts.xy_PxLx2, axis=-1)[parts.mask_PxL > 0]
    return max(float(np.percentile(r, 90)), 1e-6) / radius_units
