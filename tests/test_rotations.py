"""Tests of holly_jax.rotations against independent references.

References: scipy.spatial.transform (float64), float64 central finite
differences, closed forms (skew(e_i) is dR/dr_i at 0, Rz written out, the
Haar angle density (1 - cos t) / pi), numpy QR for Gram-Schmidt, and sample
statistics with stated tolerances.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation, Slerp

from holly_jax import rotations as rot

F32_ATOL = 1e-5  # float32 results against float64 references


def _random_rotvecs(n: int, seed: int, max_angle: float = np.pi) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return axes * rng.uniform(0.0, max_angle, size=(n, 1))


def _wxyz(r: Rotation) -> np.ndarray:
    """scipy's (x, y, z, w) quaternion as (w, x, y, z)."""
    return np.roll(r.as_quat(), 1, axis=-1)


def _skew_np(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _same_rotation_q(q1: np.ndarray, q2: np.ndarray, atol: float) -> None:
    """q and -q are the same rotation: compare |<q1, q2>| with 1."""
    np.testing.assert_allclose(np.abs(np.sum(q1 * q2, axis=-1)), 1.0, atol=atol)


# Angles spanning the Taylor branch (|r|^2 < 1e-3), its boundary (|r| ~ 0.0316) and the closed form.
GRAD_NORMS = [0.0, 1e-7, 1e-4, 0.0316, 0.0317, 0.5, 3.0]


class ConversionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_axis_angle_to_matrix_matches_scipy(self):
        r = np.concatenate([_random_rotvecs(500, 0, 3 * np.pi), _random_rotvecs(100, 1, 0.05)])
        got = np.asarray(self.variant(jax.vmap(rot.axis_angle_to_matrix))(r.astype(np.float32)))
        np.testing.assert_allclose(got, Rotation.from_rotvec(r).as_matrix(), atol=F32_ATOL)
        np.testing.assert_allclose(got @ np.swapaxes(got, 1, 2), np.broadcast_to(np.eye(3), got.shape), atol=F32_ATOL)
        np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=F32_ATOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_identity_at_zero(self):
        np.testing.assert_array_equal(self.variant(rot.axis_angle_to_matrix)(jnp.zeros(3)), np.eye(3))
        np.testing.assert_array_equal(self.variant(rot.axis_angle_to_quaternion)(jnp.zeros(3)), [1, 0, 0, 0])
        np.testing.assert_array_equal(
            self.variant(rot.quaternion_to_axis_angle)(jnp.array([1.0, 0, 0, 0])), np.zeros(3)
        )
        np.testing.assert_array_equal(self.variant(rot.matrix_to_axis_angle)(jnp.eye(3)), np.zeros(3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_round_trip_through_quaternion_and_matrix(self):
        r = np.concatenate(
            [
                _random_rotvecs(300, 2, np.pi - 0.05),
                _random_rotvecs(20, 3, 1e-6),
                np.array([[1e-7, 0, 0], [0, 1e-4, 0], [0, 0, 0.03], [0.0, 0, 0]]),
            ]
        ).astype(np.float32)

        def chain(r_3):
            q = rot.axis_angle_to_quaternion(r_3)
            q2 = rot.matrix_to_quaternion(rot.quaternion_to_matrix(q))
            return q, q2, rot.quaternion_to_axis_angle(q2)

        q, q2, r_back = map(np.asarray, self.variant(jax.vmap(chain))(r))
        _same_rotation_q(q, _wxyz(Rotation.from_rotvec(r.astype(np.float64))), 1e-6)
        _same_rotation_q(q, q2, 1e-6)
        self.assertTrue(np.all(q2[:, 0] >= 0))
        np.testing.assert_allclose(r_back, r, atol=F32_ATOL, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_round_trip_near_pi_compares_matrices(self):
        # Angles at and just under pi; r and -r are the same rotation there, so compare matrices.
        axes = _random_rotvecs(50, 4, 1.0)
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        angles = np.array([np.pi, np.pi - 1e-5, np.pi - 1e-3, np.pi - 1e-2, np.pi - 0.1])
        r = (axes[:, None, :] * angles[None, :, None]).reshape(-1, 3)
        ref = Rotation.from_rotvec(r).as_matrix()
        m = ref.astype(np.float32)
        r_back = np.asarray(self.variant(jax.vmap(rot.matrix_to_axis_angle))(m))
        self.assertTrue(np.all(np.linalg.norm(r_back, axis=1) <= np.pi + 1e-6))
        np.testing.assert_allclose(Rotation.from_rotvec(r_back.astype(np.float64)).as_matrix(), ref, atol=2e-5)
        q = np.asarray(self.variant(jax.vmap(rot.axis_angle_to_quaternion))(r.astype(np.float32)))
        np.testing.assert_allclose(np.asarray(jax.vmap(rot.quaternion_to_matrix)(q)), ref, atol=F32_ATOL)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matrix_to_quaternion_all_shepperd_branches(self):
        # Identity (w largest), half turns about x, y, z (x, y, z largest), and random rotations.
        mats = [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]
        mats += list(Rotation.random(200, random_state=5).as_matrix())
        mats = np.stack(mats)
        q = np.asarray(self.variant(jax.vmap(rot.matrix_to_quaternion))(mats.astype(np.float32)))
        _same_rotation_q(q, _wxyz(Rotation.from_matrix(mats)), 1e-6)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(jax.vmap(rot.quaternion_to_matrix)(q)), mats, atol=F32_ATOL)
        np.testing.assert_allclose(q[1:4, 1:], np.eye(3), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matrix_to_axis_angle_matches_scipy(self):
        r = _random_rotvecs(300, 6, np.pi - 0.05)
        m = Rotation.from_rotvec(r).as_matrix().astype(np.float32)
        np.testing.assert_allclose(self.variant(jax.vmap(rot.matrix_to_axis_angle))(m), r, atol=2e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sixd(self):
        mats = Rotation.random(100, random_state=7).as_matrix().astype(np.float32)
        back = self.variant(jax.vmap(lambda m: rot.sixd_to_matrix(rot.matrix_to_sixd(m))))(mats)
        np.testing.assert_allclose(back, mats, atol=F32_ATOL)
        # Arbitrary 6-vectors: orthonormal, det +1, first two columns equal QR of [a1 a2] (Gram-Schmidt).
        d = np.random.default_rng(8).normal(size=(100, 6)) * 3.0
        got = np.asarray(self.variant(jax.vmap(rot.sixd_to_matrix))(d.astype(np.float32)))
        np.testing.assert_allclose(got @ np.swapaxes(got, 1, 2), np.broadcast_to(np.eye(3), got.shape), atol=F32_ATOL)
        np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=F32_ATOL)
        for g, di in zip(got, d):
            qmat, rmat = np.linalg.qr(np.stack([di[:3], di[3:]], axis=1))
            qmat = qmat * np.sign(np.diag(rmat))
            np.testing.assert_allclose(g[:, :2], qmat, atol=1e-5)
        np.testing.assert_allclose(
            rot.matrix_to_sixd(jnp.asarray(mats[0])), np.concatenate([mats[0][:, 0], mats[0][:, 1]])
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_quaternion_multiply_composes_like_matrices(self):
        r1, r2 = Rotation.random(100, random_state=9), Rotation.random(100, random_state=10)
        q1, q2 = _wxyz(r1).astype(np.float32), _wxyz(r2).astype(np.float32)
        q12 = np.asarray(self.variant(jax.vmap(rot.quaternion_multiply))(q1, q2))
        m = jax.vmap(rot.quaternion_to_matrix)
        np.testing.assert_allclose(m(q12), np.asarray(m(q1)) @ np.asarray(m(q2)), atol=F32_ATOL)
        _same_rotation_q(q12, _wxyz(r1 * r2), 1e-6)  # scipy: r1 * r2 applies r2 first
        qc = np.asarray(jax.vmap(rot.quaternion_conjugate)(q1))
        np.testing.assert_allclose(m(qc), np.swapaxes(np.asarray(m(q1)), 1, 2), atol=F32_ATOL)
        np.testing.assert_allclose(
            jax.vmap(rot.quaternion_multiply)(q1, qc), np.tile([1.0, 0, 0, 0], (100, 1)), atol=1e-6
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_z_rotation_and_compose_in_plane(self):
        angles = np.linspace(-4.0, 4.0, 17).astype(np.float32)
        c, s = np.cos(angles.astype(np.float64)), np.sin(angles.astype(np.float64))
        rz = np.zeros((17, 3, 3))
        rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, -s, s, c, 1.0
        qz = self.variant(jax.vmap(rot.z_rotation_quaternion))(angles)
        np.testing.assert_allclose(jax.vmap(rot.quaternion_to_matrix)(qz), rz, atol=F32_ATOL)

        base = Rotation.random(17, random_state=11)
        q = np.asarray(self.variant(jax.vmap(rot.compose_in_plane))(_wxyz(base).astype(np.float32), angles))
        m = np.asarray(jax.vmap(rot.quaternion_to_matrix)(q))
        np.testing.assert_allclose(m, rz @ base.as_matrix(), atol=F32_ATOL)
        # Rotating points by the composition = base, then the in-plane turn: z unchanged, xy turned by angle.
        p = np.random.default_rng(12).normal(size=(17, 5, 3))
        by_base = np.einsum("bij,bnj->bni", base.as_matrix(), p)
        composed = np.einsum("bij,bnj->bni", m, p)
        np.testing.assert_allclose(composed[..., 2], by_base[..., 2], atol=1e-4)
        np.testing.assert_allclose(
            composed[..., 0], c[:, None] * by_base[..., 0] - s[:, None] * by_base[..., 1], atol=1e-4
        )
        np.testing.assert_allclose(
            composed[..., 1], s[:, None] * by_base[..., 0] + c[:, None] * by_base[..., 1], atol=1e-4
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_slerp(self):
        r0, r1 = Rotation.random(random_state=13), Rotation.random(random_state=14)
        q0, q1 = _wxyz(r0).astype(np.float32), _wxyz(r1).astype(np.float32)
        ts = np.linspace(0.0, 1.0, 11).astype(np.float32)
        f = self.variant(jax.vmap(rot.slerp, in_axes=(None, None, 0)))
        q = np.asarray(f(q0, q1, ts))
        _same_rotation_q(q[0], q0, 1e-6)
        _same_rotation_q(q[-1], q1, 1e-6)
        ref = Slerp([0.0, 1.0], Rotation.concatenate([r0, r1]))(ts.astype(np.float64))
        _same_rotation_q(q, _wxyz(ref), 1e-6)
        # Shortest path: the sign of q1 does not matter.
        _same_rotation_q(np.asarray(f(q0, -q1, ts)), q, 1e-6)
        # The angle from q0 grows linearly; the midpoint is equidistant from both ends.
        m = np.asarray(jax.vmap(rot.quaternion_to_matrix)(q))
        total = (r0.inv() * r1).magnitude()
        from_q0 = np.asarray(jax.vmap(rot.geodesic_angle, in_axes=(None, 0))(m[0], m))
        np.testing.assert_allclose(from_q0, ts * total, atol=2e-5)
        mid = rot.quaternion_to_matrix(f(q0, q1, np.array([0.5], np.float32))[0])
        a0, a1 = rot.geodesic_angle(r0.as_matrix(), mid), rot.geodesic_angle(r1.as_matrix(), mid)
        np.testing.assert_allclose(a0, a1, atol=2e-5)
        np.testing.assert_allclose(a0, total / 2, atol=2e-5)
        # Nearly parallel ends use normalised lerp: still unit, still between the ends.
        q1n = _wxyz(r0 * Rotation.from_rotvec([1e-3, 0, 0])).astype(np.float32)
        qn = np.asarray(f(q0, q1n, ts))
        np.testing.assert_allclose(np.linalg.norm(qn, axis=1), 1.0, atol=1e-6)
        ref_n = Slerp([0.0, 1.0], Rotation.from_quat(np.roll(np.stack([q0, q1n]), -1, axis=1)))(ts.astype(np.float64))
        _same_rotation_q(qn, _wxyz(ref_n), 1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_geodesic_angle(self):
        r1, r2 = Rotation.random(300, random_state=15), Rotation.random(300, random_state=16)
        m1, m2 = r1.as_matrix().astype(np.float32), r2.as_matrix().astype(np.float32)
        g = self.variant(jax.vmap(rot.geodesic_angle))
        np.testing.assert_allclose(g(m1, m2), (r1.inv() * r2).magnitude(), atol=2e-5)
        np.testing.assert_allclose(g(m1, m2), g(m2, m1), atol=1e-6)
        # Identical rotations give 0 and small angles stay accurate (the arccos form would lose ~3e-4 rad).
        np.testing.assert_allclose(g(m1, m1), 0.0, atol=1e-5)
        small = r1 * Rotation.from_rotvec(_random_rotvecs(300, 17, 1.0) * 1e-3)
        np.testing.assert_allclose(
            g(m1, small.as_matrix().astype(np.float32)), (r1.inv() * small).magnitude(), atol=1e-5
        )
        axes = _random_rotvecs(300, 18, 1.0)
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        for angle in (np.pi - 1e-3, np.pi):
            near_pi = r1 * Rotation.from_rotvec(axes * angle)
            np.testing.assert_allclose(g(m1, near_pi.as_matrix().astype(np.float32)), angle, atol=1e-5)


# --- Gradients at and near angle 0 -------------------------------------------------------------------

_W = np.random.default_rng(20).normal(size=(3, 3))
_DIR = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])


_GRAD_LOSS = jax.jit(jax.grad(lambda r: jnp.sum(jnp.asarray(_W, jnp.float32) * rot.axis_angle_to_matrix(r))))


def _fd_grad_scipy(r0: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """float64 central differences of sum(W * R(r)), R from scipy."""
    f = lambda r: np.sum(_W * Rotation.from_rotvec(r).as_matrix())
    return np.array([(f(r0 + h * e) - f(r0 - h * e)) / (2 * h) for e in np.eye(3)])


@pytest.mark.parametrize("norm", GRAD_NORMS)
def test_axis_angle_to_matrix_grad_matches_finite_differences(norm):
    r0 = _DIR * norm
    ref = _fd_grad_scipy(r0)
    got = np.asarray(_GRAD_LOSS(jnp.asarray(r0, jnp.float32)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, atol=2e-5)
    with jax.enable_x64(True):
        loss64 = lambda r: jnp.sum(jnp.asarray(_W) * rot.axis_angle_to_matrix(r))
        got64 = np.asarray(jax.grad(loss64)(jnp.asarray(r0, jnp.float64)))
    np.testing.assert_allclose(got64, ref, atol=1e-8)


@pytest.mark.parametrize("norm", [1e-4, 0.03, 0.06])
def test_small_angle_series_in_float64(norm):
    # In float64 the Taylor branches (taken below |r| ~ 0.032, or ~ 0.063 for quaternion -> r)
    # must match scipy to ~1e-11: this checks the series coefficients, not just float32 rounding.
    r0 = _DIR * norm
    ref = Rotation.from_rotvec(r0)
    with jax.enable_x64(True):
        r = jnp.asarray(r0, jnp.float64)
        np.testing.assert_allclose(rot.axis_angle_to_matrix(r), ref.as_matrix(), rtol=0, atol=2e-11)
        np.testing.assert_allclose(rot.axis_angle_to_quaternion(r), _wxyz(ref), rtol=0, atol=1e-12)
        np.testing.assert_allclose(rot.quaternion_to_axis_angle(jnp.asarray(_wxyz(ref))), r0, rtol=0, atol=2e-11)
        np.testing.assert_allclose(rot.matrix_to_axis_angle(jnp.asarray(ref.as_matrix())), r0, rtol=0, atol=2e-11)


def test_axis_angle_to_matrix_jacobian_at_zero_is_skew_basis():
    jac = np.asarray(jax.jit(jax.jacfwd(rot.axis_angle_to_matrix))(jnp.zeros(3)))  # 3x3x3, last axis r_i
    for i in range(3):
        np.testing.assert_allclose(jac[..., i], _skew_np(np.eye(3)[i]), atol=1e-7)
    jac_rev = np.asarray(jax.jit(jax.jacrev(rot.axis_angle_to_matrix))(jnp.zeros(3)))
    np.testing.assert_allclose(jac_rev, jac, atol=1e-7)


# For |r| < pi the maps r -> q -> r and r -> R -> r are the identity, so are their Jacobians.
_VIA_Q = lambda r: rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(r))
_VIA_M = lambda r: rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(r))
_ROUND_TRIP_JACOBIANS = jax.jit(
    lambda r: jnp.stack([jac(f)(r) for f in (_VIA_Q, _VIA_M) for jac in (jax.jacfwd, jax.jacrev)])
)


@pytest.mark.parametrize("norm", GRAD_NORMS[:-1])
def test_round_trip_jacobians_are_identity(norm):
    jacs = np.asarray(_ROUND_TRIP_JACOBIANS(jnp.asarray(_DIR * norm, jnp.float32)))
    np.testing.assert_allclose(jacs, np.broadcast_to(np.eye(3), jacs.shape), atol=1e-4)


def test_grads_finite_at_degenerate_inputs():
    eye = jnp.eye(3)
    q = jnp.array([1.0, 0, 0, 0])
    grads = jax.jit(
        lambda: [
            jax.grad(lambda m: rot.geodesic_angle(eye, m))(eye),
            jax.grad(lambda m: jnp.sum(rot.matrix_to_quaternion(m)))(eye),
            jax.grad(lambda a: jnp.sum(rot.slerp(q, a, 0.3)))(q),
            jax.grad(lambda d: jnp.sum(rot.sixd_to_matrix(d)))(jnp.array([1.0, 0, 0, 0, 1, 0])),
        ]
    )()
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


# --- Uniform sampling on SO(3) ------------------------------------------------------------------------

N_SAMPLES = 100_000


@pytest.fixture(scope="module")
def samples():
    keys = jax.random.split(jax.random.key(0), N_SAMPLES)
    q = jax.jit(jax.vmap(rot.random_quaternion))(keys)
    m = jax.jit(jax.vmap(rot.random_rotation))(keys)
    return np.asarray(q, np.float64), np.asarray(m, np.float64)


def test_random_quaternion_angle_follows_haar_density(samples):
    q, _ = samples
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    theta = 2.0 * np.arccos(np.clip(np.abs(q[:, 0]), 0.0, 1.0))
    cdf = lambda t: (t - np.sin(t)) / np.pi
    assert stats.kstest(theta, cdf).pvalue > 1e-3
    # Binned: each of 20 bins within 5 standard deviations of its expected count.
    edges = np.linspace(0.0, np.pi, 21)
    expected = N_SAMPLES * np.diff(cdf(edges))
    counts, _ = np.histogram(theta, edges)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1)


def test_random_quaternion_moments(samples):
    q, m = samples
    # E[q_i q_j] = delta_ij / 4 for the uniform measure on S^3 (sampling std ~8e-4 on the diagonal).
    np.testing.assert_allclose(q.T @ q / N_SAMPLES, np.eye(4) / 4, atol=0.005)
    # A fixed unit vector, rotated, is uniform on S^2: mean 0 (std ~2e-3), second moment I / 3.
    v = m @ np.array([0.0, 0.6, 0.8])
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(v.T @ v / N_SAMPLES, np.eye(3) / 3, atol=0.01)
    np.testing.assert_allclose(m @ np.swapaxes(m, 1, 2), np.broadcast_to(np.eye(3), m.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-5)
