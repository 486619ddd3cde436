"""Fourier shell correlation between two volumes, and the resolution where it falls below a threshold.

For cubic volumes A, B of N voxels a side, shell s holds the Fourier coefficients k (in cycles per voxel)
with round(|k| N) = s, s = 0 .. N/2 (Nyquist), and

    FSC(s) = Re sum_k A(k) conj(B(k)) / sqrt(sum_k |A(k)|^2 sum_k |B(k)|^2).

For two maps of one signal with independent noise, FSC = SNR / (1 + SNR) shell by shell. The resolution at
a threshold is the inverse of the spatial frequency where the curve first falls below it (linear
interpolation between shells), in the voxel's length unit; gold standard: 0.143 for two independent halves
(each against the other), 0.5 for a map against a ground truth. A curve that stays above the threshold to
Nyquist gives the Nyquist resolution, 2 voxels, marked as a bound.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

HALF_SET_THRESHOLD = 1 / 7  # 0.143, the cryo-EM convention for two independent half maps
TRUTH_THRESHOLD = 0.5


class Curve(NamedTuple):
    frequency: np.ndarray  # cycles per length unit, per shell
    fsc: np.ndarray
    voxels: np.ndarray  # Fourier coefficients per shell


class Resolution(NamedTuple):
    value: float  # length units
    at_nyquist: bool  # the curve never fell below the threshold: the value is a bound


def shells(n: int) -> np.ndarray:
    """The shell index of every coefficient of an n^3 FFT."""
    k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return np.round(r).astype(np.int64)


def curve(a: np.ndarray, b: np.ndarray, voxel: float = 1.0) -> Curve:
    """The FSC of two cubic volumes, shells 0 .. N/2, with frequencies in cycles per ``voxel`` length unit."""
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs two cubic volumes of one shape, got {a.shape} and {b.shape}")
    if not voxel > 0:
        raise ValueError(f"voxel size must be positive, got {voxel}")
    n = a.shape[0]
    fa, fb = np.fft.fftn(a.astype(np.float64)), np.fft.fftn(b.astype(np.float64))
    s = shells(n).ravel()
    last = n // 2
    keep = s <= last
    s = s[keep]
    cross = np.bincount(s, (fa * np.conj(fb)).real.ravel()[keep], last + 1)
    pa = np.bincount(s, (np.abs(fa) ** 2).ravel()[keep], last + 1)
    pb = np.bincount(s, (np.abs(fb) ** 2).ravel()[keep], last + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(pa * pb > 0, cross / np.sqrt(pa * pb), 0.0)
    return Curve(np.arange(last + 1) / (n * voxel), value, np.bincount(s, minlength=last + 1))


def resolution(c: Curve, threshold: float) -> Resolution:
    """Where the curve first falls below ``threshold`` (from shell 1 on), as 1 / frequency."""
    below = np.nonzero(c.fsc[1:] < threshold)[0]
    if len(below) == 0:
        return Resolution(float(1 / c.frequency[-1]), True)
    i = below[0] + 1  # shell i is the first below; i - 1 is above (or is shell 0)
    f0, f1, v0, v1 = c.frequency[i - 1], c.frequency[i], c.fsc[i - 1], c.fsc[i]
    f = f1 if v0 == v1 else f0 + (v0 - threshold) / (v0 - v1) * (f1 - f0)
    return Resolution(float(1 / f) if f > 0 else float("inf"), False)


def soft_mask(n: int, radius: float, edge: float) -> np.ndarray:
    """A sphere of ``radius`` voxels about the volume's centre: 1 inside, 0.5 at the radius, falling as
    erfc((r - radius) / edge) / 2, a mask smooth to every order, so that its own spectrum falls like a
    Gaussian's and adds no correlation at high frequency (a raised cosine's kinks would)."""
    from scipy.special import erfc

    c = (n - 1) / 2
    i = np.arange(n) - c
    r = np.sqrt(i[:, None, None] ** 2 + i[None, :, None] ** 2 + i[None, None, :] ** 2)
    return 0.5 * erfc((r - radius) / max(edge, 1e-9))
