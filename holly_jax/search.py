"""A global pose search by projection matching: every image scored against the points drawn at a grid of
rotations over SO(3), the best few kept and refined on finer local grids (docs/method.md §6, "Seeding
rows by a global pose search").

The network and the per-image refinement are local methods: a pose that starts in the wrong basin stays
there. The search looks everywhere. Its coarse grid is a Hopf-fibration-like product of near-uniform
viewing directions (a Fibonacci sphere) and in-plane angles at the same spacing; each level after it tries
the 27 turns {-s, 0, s}^3 (s halving per level) around each image's kept candidates. Every candidate is
scored by the training loss (L1 after normalisation, ``loss.l1_per_image``) with its translation set by
matching the drawn cloud's centroid to the image's. Everything runs in one jitted function: the grid is
visited in fixed chunks by ``lax.scan`` with the best ``keep`` candidates per image carried along, so the
working memory holds B x chunk images at a time whatever the grid's size (the grid itself, G x 3 x 3, is
the one thing that grows with it), and no Python loop visits images or rotations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from holly_jax import loss, render

USES = ("none", "refine")  # where the search runs: nowhere, or to seed the refinement table


class Search(NamedTuple):
    """The search's static settings (``config.search``)."""

    grid_deg: float  # the coarse grid's spacing
    levels: int  # local levels after it, the step halving each time
    keep: int  # candidates kept per image between levels
    chunk: int  # rotations scored at once per image


class Found(NamedTuple):
    R_Bx3x3: jax.Array  # the best rotation per image
    t_Bx2: jax.Array  # its translation (centroids matched)
    loss_B: jax.Array  # its loss
    R_BxKx3x3: jax.Array  # the kept candidates, best first
    loss_BxK: jax.Array


def settings(cfg) -> Search:
    """``config.search`` as a Search (its values are checked by ``setup.check_config``)."""
    c = cfg.search
    return Search(float(c.grid_deg), int(c.levels), int(c.keep), int(c.chunk))


def directions(n: int) -> np.ndarray:
    """n near-uniform unit vectors (a Fibonacci sphere), n x 3."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def grid(spacing_deg: float) -> np.ndarray:
    """Rotations covering SO(3) at about ``spacing_deg``: every viewing direction d of a sphere at that
    spacing, each turned in-plane by every angle at that spacing. R maps d to the optical axis z, so the
    image is the cloud seen along d. G x 3 x 3, float32."""
    step = math.radians(spacing_deg)
    d = directions(max(2, round(4 * math.pi / step**2)))
    psi = np.arange(max(1, round(2 * math.pi / step))) * (2 * math.pi / max(1, round(2 * math.pi / step)))
    # A_d: the rotation taking d to z about the axis d x z (the identity at d = z, a half turn at d = -z)
    axis = np.cross(d, [0.0, 0.0, 1.0])
    sin, cos = np.linalg.norm(axis, axis=1), d[:, 2]
    axis = np.where(sin[:, None] > 1e-9, axis / np.maximum(sin, 1e-12)[:, None], [1.0, 0.0, 0.0])
    A = _rotvec_to_matrix(axis * np.arctan2(sin, cos)[:, None])
    Z = _rotvec_to_matrix(np.outer(psi, [0.0, 0.0, 1.0]))
    return np.einsum("pij,djk->dpik", Z, A).reshape(-1, 3, 3).astype(np.float32)


def _rotvec_to_matrix(v_Nx3: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(v_Nx3, np.float64)).as_matrix()


def local_turns(step_rad: float) -> np.ndarray:
    """The 27 rotations exp(s (i, j, k)), i, j, k in {-1, 0, 1}: a level's neighbourhood, identity first."""
    offsets = np.array([[i, j, k] for i in (0, -1, 1) for j in (0, -1, 1) for k in (0, -1, 1)], np.float32)
    return _rotvec_to_matrix(offsets * step_rad).astype(np.float32)


def _centroid(image_HxW: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An image's intensity centroid (row, column), in pixels."""
    h, w = image_HxW.shape
    mass = jnp.maximum(jnp.sum(image_HxW), 1e-12)
    return jnp.sum(image_HxW * jnp.arange(h)[:, None]) / mass, jnp.sum(image_HxW * jnp.arange(w)[None, :]) / mass


def _placed(points_Nx3: jax.Array, R_Cx3x3: jax.Array, cy, cx, size: render.Size) -> jax.Array:
    """Translations (C x 2) that draw the cloud's centroid at pixel (cy, cx) at each rotation."""
    h, _ = size
    px, py = jax.vmap(lambda R: render.project(jnp.mean(points_Nx3, 0)[None], R, jnp.zeros(2), size))(R_Cx3x3)
    return jnp.stack([4 * (cx - px[:, 0]) / h, -4 * (cy - py[:, 0]) / h], 1)


def centred(points_Nx3: jax.Array, R_Cx3x3: jax.Array, target_HxW: jax.Array, size: render.Size) -> jax.Array:
    """Translations (C x 2) that put the cloud's drawn centroid at each rotation on the image's centroid."""
    return _placed(points_Nx3, R_Cx3x3, *_centroid(target_HxW), size)


def _shifted(image_HxW: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """The image moved by whole pixels (dy, dx), what moves in from outside zero."""
    h, w = image_HxW.shape
    rows, cols = jnp.arange(h) - dy, jnp.arange(w) - dx
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    return jnp.where(inside, image_HxW[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)], 0.0)


def _scores(points_Nx3, R_BxCx3x3, targets_BxHxW, sigma, size, mode):
    """Each image's loss at each of its C rotations (centroids matched), drawn at its sigma (a scalar or
    one per image): B x C, and the translations."""

    def one(R_Cx3x3, target, sigma):
        t = centred(points_Nx3, R_Cx3x3, target, size)
        images = render.render_poses(points_Nx3, R_Cx3x3, t, jnp.full((len(R_Cx3x3),), sigma), size)
        return loss.l1_per_image(images, target[None], mode), t

    sigma_B = jnp.broadcast_to(jnp.asarray(sigma, targets_BxHxW.dtype), targets_BxHxW.shape[:1])
    return jax.vmap(one)(R_BxCx3x3, targets_BxHxW, sigma_B)


def _best(loss_BxM, R_BxMx3x3, keep):
    _, idx = jax.lax.top_k(-loss_BxM, keep)
    take = lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
    return take(loss_BxM), take(R_BxMx3x3)


def coarse(points_Nx3, grid_Gx3x3, targets_BxHxW, sigma, size, mode, keep: int, chunk: int):
    """The best ``keep`` grid rotations per image (losses B x keep, rotations B x keep x 3 x 3), the grid
    visited ``chunk`` rotations at a time; the last chunk ends at the grid's end, its rotations already
    visited scored +inf. Nothing the size of the grid is made: memory does not grow with it.

    The grid is the same for every image, so each chunk is drawn once for the whole batch: the cloud's
    centroid at the image centre, at the batch's mean sigma, and every image moved by whole pixels to put
    its own centroid there (within half a pixel of the centred translation the local levels use). The
    kept candidates are then scored again exactly (``_scores``): the losses returned are the training
    loss at each candidate's centred translation and the image's own sigma."""
    g, b = grid_Gx3x3.shape[0], targets_BxHxW.shape[0]
    h, w = size
    chunk = min(chunk, g)
    sigma_B = jnp.broadcast_to(jnp.asarray(sigma, targets_BxHxW.dtype), (b,))
    cy_B, cx_B = jax.vmap(_centroid)(targets_BxHxW)
    moved = jax.vmap(_shifted)(
        targets_BxHxW, jnp.round(h / 2 - cy_B).astype(jnp.int32), jnp.round(w / 2 - cx_B).astype(jnp.int32)
    )
    moved = loss.normalise(moved, mode)
    sigma_C = jnp.full((chunk,), jnp.mean(sigma_B))  # one drawing per chunk for the batch: one sigma

    def visit(carry, c):
        best_loss, best_R = carry
        start = jnp.minimum(c * chunk, g - chunk)
        R = jax.lax.dynamic_slice_in_dim(grid_Gx3x3, start, chunk)
        t = _placed(points_Nx3, R, h / 2, w / 2, size)
        drawn = loss.normalise(render.render_poses(points_Nx3, R, t, sigma_C, size), mode)
        here = jnp.sum(jnp.abs(moved[:, None] - drawn[None]), axis=(-2, -1))
        here = jnp.where((start + jnp.arange(chunk) >= c * chunk)[None], here, jnp.inf)
        both_loss = jnp.concatenate([best_loss, here], 1)
        both_R = jnp.concatenate([best_R, jnp.broadcast_to(R, (b, chunk, 3, 3))], 1)
        return _best(both_loss, both_R, keep), None

    start = (jnp.full((b, keep), jnp.inf, targets_BxHxW.dtype), jnp.broadcast_to(grid_Gx3x3[:1], (b, keep, 3, 3)))
    (_, best_R), _ = jax.lax.scan(visit, start, jnp.arange(-(-g // chunk)))
    exact, _ = _scores(points_Nx3, best_R, targets_BxHxW, sigma_B, size, mode)
    return _best(exact, best_R, keep)


def local(points_Nx3, R_BxKx3x3, targets_BxHxW, sigma, size, mode, step_rad: float):
    """One level: the 27 turns around every kept candidate scored (a candidate at a time), the best K kept."""
    turns = jnp.asarray(local_turns(step_rad))
    b, k = R_BxKx3x3.shape[:2]

    def visit(_, R_Bx3x3):
        around = jnp.einsum("cij,bjk->bcik", turns, R_Bx3x3, precision=jax.lax.Precision.HIGHEST)
        return None, (_scores(points_Nx3, around, targets_BxHxW, sigma, size, mode)[0], around)

    _, (loss_KxBx27, R_KxBx27) = jax.lax.scan(visit, None, jnp.swapaxes(R_BxKx3x3, 0, 1))
    flat = lambda x: jnp.swapaxes(x, 0, 1).reshape((b, k * 27) + x.shape[3:])
    return _best(flat(loss_KxBx27), flat(R_KxBx27), k)


def search(points_Nx3, targets_BxHxW, sigma, size: render.Size, mode: str, settings: Search, grid_Gx3x3=None) -> Found:
    """The global search for a batch of images (traceable: call it inside jit), the points drawn at
    ``sigma`` (a scalar, or one per image). ``grid_Gx3x3`` defaults to ``grid(settings.grid_deg)``."""
    if grid_Gx3x3 is None:
        grid_Gx3x3 = grid(settings.grid_deg)
    keep = min(settings.keep, len(grid_Gx3x3))
    loss_BxK, R_BxK = coarse(
        points_Nx3, jnp.asarray(grid_Gx3x3), targets_BxHxW, sigma, size, mode, keep, settings.chunk
    )
    for level in range(1, settings.levels + 1):  # a handful of levels, unrolled at trace time
        loss_BxK, R_BxK = local(
            points_Nx3, R_BxK, targets_BxHxW, sigma, size, mode, math.radians(settings.grid_deg) / 2**level
        )
    best_R = R_BxK[:, 0]
    t = jax.vmap(lambda R, target: centred(points_Nx3, R[None], target, size)[0])(best_R, targets_BxHxW)
    return Found(best_R, t, loss_BxK[:, 0], R_BxK, loss_BxK)
