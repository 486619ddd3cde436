import jax.numpy as jnp
import numpy as np
import pytest

from holly_jax import loss


def test_basic_normalisation_sums_to_100_and_none_is_identity():
    x = np.random.default_rng(0).uniform(0, 3, (4, 9, 7)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loss.normalise(jnp.asarray(x), "basic")).sum((1, 2)), 100.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(loss.normalise(jnp.asarray(x), "none")), x)
    with pytest.raises(ValueError, match="normalisation"):
        loss.normalise(jnp.asarray(x), "max")


@pytest.mark.parametrize("mode", ["basic", "none"])
def test_l1_sum_matches_numpy(mode):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (2, 3, 8, 5)).astype(np.float32)
    if mode == "basic":
        a_n, b_n = (x * 100 / x.sum((1, 2), keepdims=True) for x in (a, b))
    else:
        a_n, b_n = a, b
    want = np.abs(a_n - b_n).sum()
    np.testing.assert_allclose(float(loss.l1_loss(jnp.asarray(a), jnp.asarray(b), mode)), want, rtol=1e-5)
    per = np.asarray(loss.l1_per_image(jnp.asarray(a), jnp.asarray(b), mode))
    np.testing.assert_allclose(per, np.abs(a_n - b_n).sum((1, 2)), rtol=1e-5)


def test_basic_loss_ignores_brightness_and_empty_images_stay_finite():
    x = np.random.default_rng(2).uniform(0, 1, (2, 6, 6)).astype(np.float32)
    assert float(loss.l1_loss(jnp.asarray(x), jnp.asarray(5 * x), "basic")) < 1e-3
    zero = jnp.zeros((1, 6, 6))
    assert np.isfinite(float(loss.l1_loss(zero, jnp.asarray(x[:1]), "basic")))
