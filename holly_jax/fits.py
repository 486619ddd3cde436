"""FITS images (SPEC section 6): float32, big-endian on disk, rows flipped so +y points up.

FITS stores the bottom row first; holly-jax images have row 0 at the top (the
renderer's +y is up), so rows are flipped on read and flipped back on write.
3D cubes are summed over their first axis.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from astropy.io import fits

from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image as float32 H x W; any problem with the file is a one-line InputError."""
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about non-standard headers
            with fits.open(path, memmap=False) as hdus:
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
    data = np.ascontiguousarray(np.asarray(image_HxW, np.float32)[::-1]).astype(">f4")
    hdu = fits.PrimaryHDU(data)
    for key, value in (header or {}).items():
        hdu.header[key[:8].upper()] = value
    buf = io.BytesIO()
    hdu.writeto(buf)
    write_atomic(path, buf.getvalue())
