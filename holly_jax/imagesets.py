"""Real image sets (SPEC section 6): FITS folders, one per sigma or one blurred on the device.

A data folder either holds FITS images directly (blurred on the fly inside the
jitted step at the schedule's sigma) or one subfolder per sigma, named as the
sigma (``10.0``, ``10`` or zero-padded ``08``), holding the same images
pre-blurred; training reads the folder of the schedule's current entry.
A folder's images load into one float32 array (memory-mapped from a cache
file when it would be large); images with no positive intensity are skipped,
and so is an unreadable or mis-sized image among many, with a warning and a
count at the end.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holly_jax import fits
from holly_jax.errors import InputError

FITS_SUFFIXES = (".fits", ".fit", ".fts")


class ImageSet(NamedTuple):
    images_NxHxW: np.ndarray  # float32, possibly a read-only memory map
    files: list[str]
    skipped: list[str]  # "file: problem" for each image left out


def sigma_folders(path: str | os.PathLike) -> dict[float, Path]:
    """Subfolders whose names are numbers, by the sigma they name (``08`` is 8.0)."""
    out = {}
    for p in Path(path).iterdir():
        if p.is_dir():
            try:
                out[float(p.name)] = p
            except ValueError:
                continue
    return out


def fits_in(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "data folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FITS_SUFFIXES)


def load_folder(folder: str | os.PathLike, size: tuple[int, int], cache_dir: str | os.PathLike | None = None,
                memory_limit_bytes: int = 4 << 30) -> ImageSet:
    """Every usable H x W FITS image of a folder, in name order, as one array."""
    files = fits_in(folder)
    others = [p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() not in FITS_SUFFIXES]
    skipped = [f"{Path(folder) / name}: not a FITS file name" for name in others if not name.startswith(".")]
    if not files:
        raise InputError(folder, "folder has no FITS images (.fits, .fit, .fts)")
    n, (h, w) = len(files), size
    if cache_dir is not None and n * h * w * 4 > memory_limit_bytes:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        store = np.lib.format.open_memmap(Path(cache_dir) / f"{Path(folder).name}.npy", mode="w+",
                                          dtype=np.float32, shape=(n, h, w))
    else:
        store = np.empty((n, h, w), np.float32)
    kept: list[str] = []
    for f in files:
        try:
            image = fits.read_image(f)
        except InputError as e:
            skipped.append(str(e))
            continue
        if image.shape != (h, w):
            skipped.append(f"{f}: image is {image.shape[0]}x{image.shape[1]}, expected {h}x{w}")
            continue
        if not image.sum() > 0:
            skipped.append(f"{f}: no positive intensity")
            continue
        store[len(kept)] = image
        kept.append(str(f))
    if not kept:
        raise InputError(folder, f"no usable FITS images ({len(skipped)} skipped; first: {skipped[0]})")
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    images = store[:len(kept)]
    if isinstance(store, np.memmap):
        store.flush()
    return ImageSet(images, kept, skipped)


def blur_matrix(n: int, sigma: jax.Array) -> jax.Array:
    """n x n matrix of a normalised 1D Gaussian (zero outside the image): rows are output pixels."""
    d = jnp.arange(n, dtype=jnp.float32)
    g = jnp.exp(-jnp.square(d[:, None] - d[None, :]) / (2.0 * sigma**2))
    k = jnp.arange(-n + 1, n, dtype=jnp.float32)
    return g / jnp.sum(jnp.exp(-jnp.square(k) / (2.0 * sigma**2)))


def blur(images_BxHxW: jax.Array, sigma: jax.Array) -> jax.Array:
    """Gaussian blur of width sigma (pixels) as two matrix products; sigma is data, so it never recompiles.

    Matches ``scipy.ndimage.gaussian_filter(image, sigma, mode="constant", truncate=inf)``.
    """
    _, h, w = images_BxHxW.shape
    by, bx = blur_matrix(h, sigma), blur_matrix(w, sigma)
    return jnp.einsum("yh,bhw,xw->byx", by, images_BxHxW, bx, precision=jax.lax.Precision.HIGHEST)
