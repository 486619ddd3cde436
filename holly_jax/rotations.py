"""3D rotations: axis-angle, quaternions, matrices, 6D, sampling and metrics.

This module owns every conversion between rotation representations used by
holly-jax, uniform sampling on SO(3), in-plane (z) augmentation, slerp and the
geodesic distance. All functions take single items (callers `jax.vmap`), are
pure and jittable, and keep the input dtype (float32 in the project).

Conventions:
  * Axis-angle `r_3`: rotation by |r| radians about r / |r| (docs/method.md §1).
  * Quaternions `q_4` are (w, x, y, z), unit; q and -q are the same rotation.
    `quaternion_multiply(q1, q2)` applies q2 first, then q1.
  * Matrices act on column vectors: p' = R_3x3 @ p.

Functions with a removable singularity at angle 0 switch to a Taylor series
below a small threshold with the double-`jnp.where` trick, so values *and*
gradients are finite and correct there (no NaN leaks from the unused branch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Below this squared angle (or squared tan of the half angle) the Taylor branches
# are used; their truncation error there is far under float32 resolution.
_SMALL_SQ = 1e-3


def _skew(v_3: jax.Array) -> jax.Array:
    """The matrix K_3x3 with K @ u == cross(v, u)."""
    x, y, z = v_3[0], v_3[1], v_3[2]
    o = jnp.zeros_like(x)
    return jnp.stack([jnp.stack([o, -z, y]), jnp.stack([z, o, -x]), jnp.stack([-y, x, o])])


def _safe_norm(v: jax.Array) -> jax.Array:
    """Euclidean norm whose gradient at v == 0 is 0 instead of NaN."""
    sq = jnp.sum(v * v)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def axis_angle_to_matrix(r_3: jax.Array) -> jax.Array:
    """Rodrigues: R_3x3 = I + (sin t / t) K + ((1 - cos t) / t^2) K^2, K = skew(r), t = |r|."""
    r_3 = jnp.asarray(r_3)
    t2 = jnp.sum(r_3 * r_3)
    small = t2 < _SMALL_SQ
    t = jnp.sqrt(jnp.where(small, 1.0, t2))
    a = jnp.where(small, 1.0 - t2 / 6.0 + t2 * t2 / 120.0, jnp.sin(t) / t)
    # (1 - cos t) / t^2 as 2 sin^2(t/2) / t^2: no cancellation in float32.
    b = jnp.where(small, 0.5 - t2 / 24.0 + t2 * t2 / 720.0, 2.0 * jnp.square(jnp.sin(0.5 * t) / t))
    k = _skew(r_3)
    return jnp.eye(3, dtype=r_3.dtype) + a * k + b * jnp.matmul(k, k, precision=jax.lax.Precision.HIGHEST)


def axis_angle_to_quaternion(r_3: jax.Array) -> jax.Array:
    """q_4 = (cos(t/2), sin(t/2) r / t), t = |r|."""
    r_3 = jnp.asarray(r_3)
    t2 = jnp.sum(r_3 * r_3)
    small = t2 < _SMALL_SQ
    t = jnp.sqrt(jnp.where(small, 1.0, t2))
    s = jnp.where(small, 0.5 - t2 / 48.0 + t2 * t2 / 3840.0, jnp.sin(0.5 * t) / t)
    w = jnp.where(small, 1.0 - t2 / 8.0 + t2 * t2 / 384.0, jnp.cos(0.5 * t))
    return jnp.concatenate([w[None], s * r_3])


def quaternion_to_axis_angle(q_4: jax.Array) -> jax.Array:
    """Axis-angle r_3 with |r| in [0, pi] (q is flipped to w >= 0 first; any nonzero scale)."""
    q_4 = jnp.asarray(q_4)
    q_4 = jnp.where(q_4[0] < 0, -q_4, q_4)
    w, v = q_4[0], q_4[1:]
    s2 = jnp.sum(v * v)
    small = s2 < _SMALL_SQ * w * w  # implies w > 0
    s = jnp.sqrt(jnp.where(small, 1.0, s2))
    w_safe = jnp.where(small, w, 1.0)
    # |r| / |v| = 2 atan2(s, w) / s = (2 / w) atan(u) / u with u = s / w; series near u = 0.
    u2 = s2 / (w_safe * w_safe)
    scale = jnp.where(small, (2.0 / w_safe) * (1.0 - u2 / 3.0 + u2 * u2 / 5.0), 2.0 * jnp.arctan2(s, w) / s)
    return scale * v


def quaternion_to_matrix(q_4: jax.Array) -> jax.Array:
    """R_3x3 of q_4 (any nonzero scale: q is normalised implicitly)."""
    q_4 = jnp.asarray(q_4)
    w, x, y, z = q_4[0], q_4[1], q_4[2], q_4[3]
    s = 2.0 / jnp.sum(q_4 * q_4)
    return jnp.stack(
        [
            jnp.stack([1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)]),
            jnp.stack([s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)]),
            jnp.stack([s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)]),
        ]
    )


def matrix_to_quaternion(R_3x3: jax.Array) -> jax.Array:
    """Unit q_4 with w >= 0, by Shepperd's method without Python branches.

    Row i of `cand` equals 4 q_i q; the row of the largest |q_i| (at least 1/2)
    is normalised, so no small component is ever divided by.
    """
    m = jnp.asarray(R_3x3)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    diag = jnp.stack([1 + tr, 1 + 2 * m[0, 0] - tr, 1 + 2 * m[1, 1] - tr, 1 + 2 * m[2, 2] - tr])  # 4 q_i^2
    wx, wy, wz = m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]
    xy, xz, yz = m[1, 0] + m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1]
    cand = jnp.stack(
        [
            jnp.stack([diag[0], wx, wy, wz]),
            jnp.stack([wx, diag[1], xy, xz]),
            jnp.stack([wy, xy, diag[2], yz]),
            jnp.stack([wz, xz, yz, diag[3]]),
        ]
    )
    q = cand[jnp.argmax(diag)]
    q = q / jnp.sqrt(jnp.sum(q * q))
    return jnp.where(q[0] < 0, -q, q)


def matrix_to_axis_angle(R_3x3: jax.Array) -> jax.Array:
    """Axis-angle r_3 with |r| in [0, pi], via the quaternion."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R_3x3))


def quaternion_multiply(q1_4: jax.Array, q2_4: jax.Array) -> jax.Array:
    """Hamilton product q1 * q2: the rotation q2 followed by q1."""
    w1, x1, y1, z1 = q1_4[0], q1_4[1], q1_4[2], q1_4[3]
    w2, x2, y2, z2 = q2_4[0], q2_4[1], q2_4[2], q2_4[3]
    return jnp.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def quaternion_conjugate(q_4: jax.Array) -> jax.Array:
    """(w, -x, -y, -z): the inverse rotation of a unit quaternion."""
    q_4 = jnp.asarray(q_4)
    return q_4 * jnp.array([1, -1, -1, -1], dtype=q_4.dtype)


def random_quaternion(key: jax.Array) -> jax.Array:
    """Unit q_4 uniform on SO(3), by Shoemake's method from three uniforms (float32)."""
    u1, u2, u3 = jax.random.uniform(key, (3,), dtype=jnp.float32)
    a, b = jnp.sqrt(1.0 - u1), jnp.sqrt(u1)
    t2, t3 = 2 * jnp.pi * u2, 2 * jnp.pi * u3
    return jnp.stack([b * jnp.cos(t3), a * jnp.sin(t2), a * jnp.cos(t2), b * jnp.sin(t3)])


def random_rotation(key: jax.Array) -> jax.Array:
    """R_3x3 uniform on SO(3)."""
    return quaternion_to_matrix(random_quaternion(key))


def z_rotation_quaternion(angle: jax.Array) -> jax.Array:
    """q_4 of a rotation by `angle` radians about +z."""
    half = 0.5 * jnp.asarray(angle, dtype=jnp.result_type(float, angle))
    o = jnp.zeros_like(half)
    return jnp.stack([jnp.cos(half), o, o, jnp.sin(half)])


def compose_in_plane(q_base_4: jax.Array, angle: jax.Array) -> jax.Array:
    """q_z(angle) * q_base: the base rotation, then an in-plane one about z (docs/method.md §3)."""
    q_base_4 = jnp.asarray(q_base_4)
    return quaternion_multiply(z_rotation_quaternion(angle).astype(q_base_4.dtype), q_base_4)


def slerp(q0_4: jax.Array, q1_4: jax.Array, t: jax.Array) -> jax.Array:
    """Shortest-path spherical interpolation of unit q_4: q0 at t = 0, q1 at t = 1."""
    q0_4, q1_4 = jnp.asarray(q0_4), jnp.asarray(q1_4)
    d = jnp.dot(q0_4, q1_4, precision=jax.lax.Precision.HIGHEST)
    q1_4 = jnp.where(d < 0, -q1_4, q1_4)
    d = jnp.abs(d)
    near = d > 0.9995  # nearly parallel: sin(theta) too small to divide by, lerp instead
    theta = jnp.arccos(jnp.where(near, 0.5, jnp.minimum(d, 1.0)))
    w0 = jnp.where(near, 1.0 - t, jnp.sin((1.0 - t) * theta) / jnp.sin(theta))
    w1 = jnp.where(near, t, jnp.sin(t * theta) / jnp.sin(theta))
    q = w0 * q0_4 + w1 * q1_4
    return q / jnp.sqrt(jnp.sum(q * q))


def geodesic_angle(R1_3x3: jax.Array, R2_3x3: jax.Array) -> jax.Array:
    """Angle in [0, pi] of R1^T R2, as atan2(sin, cos): accurate near 0 and near pi."""
    m = jnp.matmul(jnp.asarray(R1_3x3).T, jnp.asarray(R2_3x3), precision=jax.lax.Precision.HIGHEST)
    cos = 0.5 * (jnp.trace(m) - 1.0)
    sin = 0.5 * _safe_norm(jnp.stack([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]))
    return jnp.arctan2(sin, cos)


def sixd_to_matrix(d_6: jax.Array) -> jax.Array:
    """Zhou et al. (2019) 6D to R_3x3: d[:3] and d[3:] give the first two COLUMNS.

    Gram-Schmidt: c1 = d[:3] / |d[:3]|, c2 = the normalised part of d[3:]
    orthogonal to c1, c3 = c1 x c2; R = [c1 c2 c3] (columns).
    """
    d_6 = jnp.asarray(d_6)
    a1, a2 = d_6[:3], d_6[3:]
    c1 = a1 / jnp.maximum(_safe_norm(a1), 1e-12)
    c2 = a2 - jnp.dot(c1, a2, precision=jax.lax.Precision.HIGHEST) * c1
    c2 = c2 / jnp.maximum(_safe_norm(c2), 1e-12)
    return jnp.stack([c1, c2, jnp.cross(c1, c2)], axis=-1)


def matrix_to_sixd(R_3x3: jax.Array) -> jax.Array:
    """d_6: the first two columns of R_3x3, concatenated (inverse of sixd_to_matrix on SO(3))."""
    R_3x3 = jnp.asarray(R_3x3)
    return jnp.concatenate([R_3x3[:, 0], R_3x3[:, 1]])
