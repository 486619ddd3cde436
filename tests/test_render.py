import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import dense_render
from scipy.spatial.transform import Rotation

from holly_jax import render, rotations


def _case(seed, n, size):
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1.5, 1.5, (n, 3)).astype(np.float32)
    rotvec = Rotation.random(random_state=seed).as_rotvec().astype(np.float32)
    t = rng.uniform(-0.2, 0.2, 2).astype(np.float32)
    sigma = np.float32(rng.uniform(0.8, 6.0))
    mask = (rng.uniform(size=n) > 0.3).astype(np.float32)
    return points, rotvec, t, sigma, mask


def _render(points, rotvec, t, sigma, mask, size):
    R = rotations.axis_angle_to_matrix(jnp.asarray(rotvec))
    return np.asarray(
        render.render(
            jnp.asarray(points),
            R,
            jnp.asarray(t),
            jnp.asarray(sigma),
            None if mask is None else jnp.asarray(mask),
            size,
        )
    )


@pytest.mark.parametrize(
    "seed,n,size", [(0, 50, (32, 32)), (1, 40, (24, 40)), (2, 60, (48, 20)), (3, 30, (64, 64)), (4, 1, (17, 23))]
)
def test_separable_matches_dense(seed, n, size):
    points, rotvec, t, sigma, mask = _case(seed, n, size)
    got = _render(points, rotvec, t, sigma, mask, size)
    want = dense_render(points, rotvec, t, sigma, mask, size)
    assert got.shape == size
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5
    np.testing.assert_allclose(got, want, atol=1e-5 * want.max())


def test_geometry_conventions():
    # (0,0,0) lands on pixel (W/2, H/2); +y points up; object coordinate 2 reaches the image edge.
    size = (32, 48)
    one = lambda p, t=(0.0, 0.0), s=0.5: _render(
        np.array([p], np.float32), np.zeros(3, np.float32), np.array(t, np.float32), s, None, size
    )
    assert np.unravel_index(one([0, 0, 0]).argmax(), size) == (16, 24)
    assert np.unravel_index(one([0, 1, 0]).argmax(), size) == (16 - 8, 24)  # up = smaller row
    assert np.unravel_index(one([1, 0, 0]).argmax(), size) == (16, 24 + 8)  # x scales by H/2 too
    assert np.unravel_index(one([0, 0, 0], (1.0, 0.0)).argmax(), size) == (16, 24 + 8)
    # a point well inside sums to 1 (the Gaussian is normalised; sigma 2 px is well sampled)
    np.testing.assert_allclose(one([0.1, -0.2, 0.3], s=2.0).sum(), 1.0, rtol=1e-5)


def test_mask_and_batch_vmaps():
    points, rotvec, t, sigma, mask = _case(7, 30, (20, 28))
    size = (20, 28)
    R = jnp.stack([rotations.axis_angle_to_matrix(jnp.asarray(rotvec)), jnp.eye(3)])
    ts = jnp.stack([jnp.asarray(t), jnp.zeros(2)])
    sigmas = jnp.asarray([sigma, 2.0])
    batch = np.asarray(render.render_poses(jnp.asarray(points), R, ts, sigmas, size))
    np.testing.assert_allclose(batch[0], dense_render(points, rotvec, t, sigma, None, size), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        batch[1], dense_render(points, np.zeros(3), (0, 0), 2.0, None, size), rtol=1e-4, atol=1e-7
    )
    # two items at the same pose whose masks are complementary add up to the unmasked image
    both = np.asarray(
        render.render_items(
            jnp.stack([points, points]),
            jnp.stack([R[0], R[0]]),
            jnp.stack([ts[0], ts[0]]),
            jnp.asarray([sigma, sigma]),
            jnp.stack([mask, 1 - mask]),
            size,
        )
    )
    np.testing.assert_allclose(both[0], dense_render(points, rotvec, t, sigma, mask, size), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(both[0] + both[1], batch[0], rtol=1e-5, atol=1e-7)


def _fd_check(f, x, eps, rtol):
    """Central finite differences in float64 against jax.grad along random directions."""
    x = np.asarray(x, np.float64)
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = rng.normal(size=x.shape)
        d /= np.linalg.norm(d)
        fd = (float(f(jnp.asarray(x + eps * d))) - float(f(jnp.asarray(x - eps * d)))) / (2 * eps)
        np.testing.assert_allclose(np.sum(g * d), fd, rtol=rtol, atol=1e-8)


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        points, rotvec, t, sigma, mask = _case(11, 25, (24, 30))
        size = (24, 30)
        weights = jnp.asarray(np.random.default_rng(1).normal(size=size))
        P, r, tt, s = (jnp.asarray(a, jnp.float64) for a in (points, rotvec, t, sigma))
        m = jnp.asarray(mask, jnp.float64)

        def scalar(P, r, tt, s):
            return jnp.sum(weights * render.render(P, rotations.axis_angle_to_matrix(r), tt, s, m, size))

        _fd_check(lambda x: scalar(x, r, tt, s), P, 1e-6, 1e-5)
        _fd_check(lambda x: scalar(P, x, tt, s), r, 1e-6, 1e-5)
        _fd_check(lambda x: scalar(P, r, x, s), tt, 1e-6, 1e-5)
        _fd_check(lambda x: scalar(P, r, tt, x), s, 1e-6, 1e-5)
