"""Differentiable Gaussian splatting of a point cloud (docs/method.md §1).

The image of N points is a sum of isotropic Gaussians. Because each Gaussian
factorises into a row term and a column term, the image is
``Gy^T diag(mask) Gx``: two small exponential tables (N x H and N x W) and one
matrix product, exact and O(N (H + W)) exponentials instead of O(N H W).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Size = tuple[int, int]  # (H rows, W columns)


def project(points_Nx3: jax.Array, R_3x3: jax.Array, t_2: jax.Array, size: Size) -> tuple[jax.Array, jax.Array]:
    """Pixel coordinates (px, py) of points under rotation R and translation t."""
    h, w = size
    p_Nx3 = 0.5 * jnp.matmul(points_Nx3, R_3x3.T, precision=jax.lax.Precision.HIGHEST)
    px_N = (h / 2) * (p_Nx3[:, 0] + 0.5 * t_2[0]) + w / 2
    py_N = -(h / 2) * (p_Nx3[:, 1] + 0.5 * t_2[1]) + h / 2
    return px_N, py_N


def render(
    points_Nx3: jax.Array, R_3x3: jax.Array, t_2: jax.Array, sigma: jax.Array, mask_N: jax.Array | None, size: Size
) -> jax.Array:
    """Image HxW of the points at one pose, blurred by sigma (pixels); mask_N in {0, 1} switches points off."""
    chex.assert_shape(points_Nx3, (None, 3))
    h, w = size
    px_N, py_N = project(points_Nx3, R_3x3, t_2, size)
    inv_two_var = 1.0 / (2.0 * sigma**2)
    gx_NxW = jnp.exp(-jnp.square(px_N[:, None] - jnp.arange(w, dtype=px_N.dtype)) * inv_two_var)
    gy_NxH = jnp.exp(-jnp.square(py_N[:, None] - jnp.arange(h, dtype=py_N.dtype)) * inv_two_var)
    if mask_N is not None:
        gy_NxH = gy_NxH * mask_N[:, None].astype(gy_NxH.dtype)
    image_HxW = jnp.einsum("nh,nw->hw", gy_NxH, gx_NxW, precision=jax.lax.Precision.HIGHEST)
    return image_HxW / (2.0 * jnp.pi * sigma**2)


def render_poses(
    points_Nx3: jax.Array, R_Bx3x3: jax.Array, t_Bx2: jax.Array, sigma_B: jax.Array, size: Size
) -> jax.Array:
    """One shared point cloud, all points on, at B poses and sigmas -> B x H x W."""
    return jax.vmap(render, in_axes=(None, 0, 0, 0, None, None))(points_Nx3, R_Bx3x3, t_Bx2, sigma_B, None, size)


def render_items(
    points_BxNx3: jax.Array, R_Bx3x3: jax.Array, t_Bx2: jax.Array, sigma_B: jax.Array, mask_BxN: jax.Array, size: Size
) -> jax.Array:
    """B items, each with its own points and mask -> B x H x W."""
    return jax.vmap(render, in_axes=(0, 0, 0, 0, 0, None))(points_BxNx3, R_Bx3x3, t_Bx2, sigma_B, mask_BxN, size)
