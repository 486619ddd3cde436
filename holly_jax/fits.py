"""FITS images and image sets (docs/method.md §3): files, folders, the per-sigma layout, the on-device blur.

A FITS file holds float32 pixels, big-endian on disk, bottom row first;
holly-jax images have row 0 at the top (the renderer's +y is up), so rows are
flipped on read and flipped back on write. 3D cubes are summed over their
first axis.

A data folder either holds FITS images directly (blurred inside the jitted
step at the schedule's sigma) or one subfolder per sigma, named as the sigma
(``10.0``, ``10`` or zero-padded ``08``), holding the same images pre-blurred;
training reads the folder of the schedule's current entry (``FitsImages``).
A folder's images load into one float32 array (memory-mapped from a cache
file when it would be large); an unreadable, mis-sized or empty image among
many is skipped with a warning and counted.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError

SUFFIXES = (".fits", ".fit", ".fts")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image as float32 H x W; any problem with the file is a one-line InputError."""
    from astropy.io import fits as astropy_fits  # imported by the two functions that use it: launches start sooner

    if not os.path.exists(path):
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about non-standard headers
            with astropy_fits.open(path, memmap=False) as hdus:
                hdu = next((h for h in hdus if h.data is not None), None)
                data = None if hdu is None else np.asarray(hdu.data)
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise InputError(path, f"not a FITS file, or corrupt or truncated ({' '.join(str(e).split())[:120]})") from None
    if data is None:
        raise InputError(path, "FITS file holds no image data")
    if data.ndim == 3:
        data = data.sum(axis=0)
    if data.ndim != 2:
        raise InputError(path, f"FITS image must be 2D or a 3D cube, got shape {data.shape}")
    image = np.ascontiguousarray(data[::-1], dtype=np.float32)
    if not np.isfinite(image).all():
        raise InputError(path, "image has NaN or infinite pixels")
    return image


def write_image(path: str | os.PathLike, image_HxW: np.ndarray, header: dict | None = None) -> None:
    """An image as a big-endian float32 FITS file (rows flipped back), written atomically."""
    from astropy.io import fits as astropy_fits

    data = np.ascontiguousarray(np.asarray(image_HxW, np.float32)[::-1]).astype(">f4")
    hdu = astropy_fits.PrimaryHDU(data)
    for key, value in (header or {}).items():
        hdu.header[key[:8].upper()] = value
    buf = io.BytesIO()
    hdu.writeto(buf)
    write_atomic(path, buf.getvalue())


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


def files_in(folder: str | os.PathLike) -> list[Path]:
    """A folder's FITS files in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "data folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def load_folder(
    folder: str | os.PathLike,
    size: tuple[int, int],
    cache_dir: str | os.PathLike | None = None,
    memory_limit_bytes: int = 4 << 30,
) -> ImageSet:
    """Every usable H x W FITS image of a folder, in name order, as one array."""
    files = files_in(folder)
    others = [p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() not in SUFFIXES]
    skipped = [f"{Path(folder) / name}: not a FITS file name" for name in others if not name.startswith(".")]
    if not files:
        raise InputError(folder, "folder has no FITS images (.fits, .fit, .fts)")
    n, (h, w) = len(files), size
    if cache_dir is not None and n * h * w * 4 > memory_limit_bytes:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        store = np.lib.format.open_memmap(
            Path(cache_dir) / f"{Path(folder).name}.npy", mode="w+", dtype=np.float32, shape=(n, h, w)
        )
    else:
        store = np.empty((n, h, w), np.float32)
    kept: list[str] = []
    for f in files:
        try:
            image = read_image(f)
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
    images = store[: len(kept)]
    if isinstance(store, np.memmap):
        store.flush()
    return ImageSet(images, kept, skipped)


class FitsImages:
    """The FITS images for each schedule entry: one folder blurred on the device, or one folder per sigma.

    Only the current entry's folder is held (memory-mapped when large); moving to an entry with another
    folder loads it, and its usable images must be the same files as the first folder's.
    """

    def __init__(self, entry_folders: list[Path], blur: bool, size: tuple[int, int], cache_dir: Path | None):
        self.entry_folders, self.blur, self.size, self.cache_dir = entry_folders, blur, size, cache_dir
        self.loaded: dict[Path, ImageSet] = {}  # at most two: the training and the evaluation entry
        self.names: list[str] | None = None
        self.skipped = 0
        self.lock = threading.Lock()  # batches are gathered on a background thread
        self.load(entry_folders[0])

    def load(self, folder: Path) -> ImageSet:
        with self.lock:
            if folder not in self.loaded:
                loaded = load_folder(folder, self.size, self.cache_dir)
                names = [Path(f).name for f in loaded.files]
                if self.names is not None and names != self.names:
                    raise InputError(
                        folder,
                        f"its usable images differ from those in {self.entry_folders[0]} "
                        "(each sigma folder must hold the same images)",
                    )
                self.names = names
                self.skipped += len(loaded.skipped)
                if len(self.loaded) >= 2:
                    del self.loaded[next(iter(self.loaded))]
                self.loaded[folder] = loaded
            return self.loaded[folder]

    def images_for_entry(self, entry: int) -> np.ndarray:
        return self.load(self.entry_folders[entry]).images_NxHxW

    def __len__(self) -> int:
        return len(self.names)


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
