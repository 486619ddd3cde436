import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from holly_jax import model


def _init(h, w, **kw):
    """The network and its variables, initialised in one compiled program (eagerly, each layer's operations
    would compile one by one)."""
    net = model.HollyNet(**kw)
    variables = jax.jit(net.init, static_argnames="train")(jax.random.key(0), jnp.zeros((2, h, w)), train=False)
    return net, variables


def _apply(net, variables, x, **kw):
    """``net.apply`` compiled, its keyword arguments static."""
    return jax.jit(lambda v, x: net.apply(v, x, **kw))(variables, x)


def _expected_param_count(h, w, n_out):
    """Closed form from docs/method.md §2: conv weights + biases, BatchNorm scale + shift, two dense layers."""
    count, c_in = 0, 1
    for _, c, k, _, _ in model.LAYERS:
        count += k * k * c_in * c + c + 2 * c
        c_in = c
    flat = model.spatial_size(h) * model.spatial_size(w) * c_in
    return count + flat * 256 + 256 + 256 * n_out + n_out


def test_flatten_size_and_parameter_count_at_128():
    net = model.HollyNet()
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, 128, 128)), train=False))["params"]
    assert params["fc1"]["kernel"].shape == (6400, 256)  # 5 * 5 * 256
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == _expected_param_count(128, 128, 6)
    assert 2.9e6 < n < 3.1e6


@pytest.mark.parametrize("h,w", [(64, 64), (40, 72)])
def test_any_input_size(h, w):
    net, variables = _init(h, w, predict_sigma=False)
    fc1 = variables["params"]["fc1"]["kernel"]
    assert fc1.shape[0] == model.spatial_size(h) * model.spatial_size(w) * 256
    pose = _apply(net, variables, jnp.ones((3, h, w)), train=False)
    assert pose.R_Bx3x3.shape == (3, 3, 3) and pose.t_Bx2.shape == (3, 2) and pose.sigma_B is None
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == _expected_param_count(h, w, 5)


def test_heads_match_closed_form():
    out = np.random.default_rng(0).normal(0, 3, (5, 6)).astype(np.float32)
    out[0, 5] = 40.0  # softplus above the clamp
    pose = model.decode_heads(jnp.asarray(out), "axis_angle", 0.1, True)
    np.testing.assert_allclose(np.asarray(pose.R_Bx3x3), Rotation.from_rotvec(out[:, :3]).as_matrix(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(pose.t_Bx2), np.tanh(out[:, 3:5]) * 0.2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pose.sigma_B), np.minimum(np.log1p(np.exp(out[:, 5])), 14.0), rtol=1e-5)
    assert float(pose.sigma_B[0]) == 14.0


def test_sixd_head_gives_rotations():
    net, variables = _init(32, 32, rotation="6d")
    assert variables["params"]["fc2"]["kernel"].shape[1] == 6 + 2 + 1
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32))
    R = np.asarray(_apply(net, variables, x, train=False).R_Bx3x3)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)


def test_batchnorm_statistics_update_only_in_training():
    net, variables = _init(32, 32)
    x = 5.0 + jax.random.normal(jax.random.key(2), (4, 32, 32))
    _, state = _apply(
        net, variables, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    conv1_out = np.asarray(state["intermediates"]["conv1"]["__call__"][0])
    before = np.asarray(variables["batch_stats"]["conv1_bn"]["mean"])
    after = np.asarray(state["batch_stats"]["conv1_bn"]["mean"])
    # PyTorch momentum 0.1: the running mean moves 10% of the way to the batch mean
    np.testing.assert_allclose(after, 0.9 * before + 0.1 * conv1_out.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    _, frozen = _apply(net, variables, x, train=False, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(frozen["batch_stats"]["conv1_bn"]["mean"]), before)


def test_bfloat16_option_runs_convolutions_in_bfloat16_and_heads_in_float32():
    net, variables = _init(32, 32, dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(3), (2, 32, 32))
    assert variables["params"]["conv1"]["kernel"].dtype == jnp.float32  # parameters stay float32
    pose, state = _apply(net, variables, x, train=False, mutable=["intermediates"], capture_intermediates=True)
    assert state["intermediates"]["conv1"]["__call__"][0].dtype == jnp.bfloat16
    assert pose.R_Bx3x3.dtype == jnp.float32 and pose.t_Bx2.dtype == jnp.float32


def _ynnpack_convolutions(hlo: str) -> int:
    """How many of a compiled module's convolutions XLA hands to YNNPACK (fusions named ynn_fusion*)."""
    called = set(re.findall(r"%ynn_fusion[\w.]* = .*?calls=%([\w.\-]+)", hlo))
    blocks = {b.split()[0].lstrip("%"): b for b in hlo.split("\n\n") if b.strip()}
    return sum("convolution(" in blocks.get(name, "") for name in called)


def test_cpu_steps_compile_convolutions_without_ynnpack_and_give_the_same_numbers():
    """holly_jax.compiler: on the CPU the network's convolutions leave YNNPACK (XLA's default) and the gradient
    is XLA's default one up to float32 rounding."""
    from holly_jax import compiler

    if jax.default_backend() != "cpu":
        pytest.skip("the option is for XLA:CPU")
    assert compiler.options() == compiler.CPU  # this jaxlib knows the option
    net, variables = _init(40, 40)
    x = jax.random.normal(jax.random.key(1), (4, 40, 40))

    def loss(params):
        out, _ = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out.R_Bx3x3 * jnp.arange(9.0).reshape(3, 3)) + jnp.sum(out.t_Bx2) + jnp.sum(out.sigma_B)

    ours = compiler.jit(jax.grad(loss))
    default = jax.jit(jax.grad(loss), compiler_options=compiler.XLA_DEFAULT_CPU)
    hlo = ours.lower(variables["params"]).compile().as_text()
    assert "convolution(" in hlo and _ynnpack_convolutions(hlo) == 0
    assert _ynnpack_convolutions(default.lower(variables["params"]).compile().as_text()) >= len(model.LAYERS)
    # conv biases before BatchNorm have zero gradient in exact arithmetic: tolerance scaled by the largest entry
    flat = lambda tree: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])
    a, b = flat(ours(variables["params"])), flat(default(variables["params"]))
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5 * np.max(np.abs(b)))
