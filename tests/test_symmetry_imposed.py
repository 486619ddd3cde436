"""An imposed point group: the group's rotations, drawing the unit under the group against drawing the
explicitly replicated cloud (images and gradients, and finite differences), c1 untouched, bad values, and
a run that learns a unit and writes the symmetric cloud."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from configs import tiny
from holly_jax import forward, pipeline, pointfile, symmetry, train
from holly_jax.errors import InputError
from holly_jax.setup import create_setup


@pytest.mark.parametrize("name,order", [("c1", 1), ("c9", 9), ("d8", 16), ("t", 12), ("o", 24), ("i", 60)])
def test_group_rotations_form_the_group(name, order):
    R = symmetry.group_rotations(name)
    assert len(R) == order and np.allclose(R[0], np.eye(3))
    np.testing.assert_allclose(np.einsum("gij,gkj->gik", R, R), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    products = np.einsum("aij,bjk->abik", R, R).reshape(-1, 3, 3)
    assert all(np.linalg.norm(R - p, axis=(1, 2)).min() < 1e-9 for p in products)  # closed
    assert len({tuple(np.round(r, 6).ravel()) for r in R}) == order  # distinct


def test_cyclic_and_dihedral_frames():
    c9 = symmetry.group_rotations("c9")
    assert np.linalg.norm(c9 - Rotation.from_euler("z", 40, degrees=True).as_matrix(), axis=(1, 2)).min() < 1e-12
    d8 = symmetry.group_rotations("d8")
    assert np.linalg.norm(d8 - np.diag([1.0, -1.0, -1.0]), axis=(1, 2)).min() < 1e-12  # pi about x
    assert np.allclose(d8[:8, :, 2], [0, 0, 1]) and np.allclose(d8[8:, 2, 2], -1)  # 8 about z, 8 flipping z


def _setup(name="c4", num=60):
    cfg = tiny.get_config()
    cfg.model.symmetry, cfg.points.num = name, num
    return create_setup(cfg)


def _replicated(unit, group):
    return np.einsum("gij,uj->gui", group, unit).reshape(-1, 3)


@pytest.mark.parametrize("name", ["c4", "d3", "t"])
def test_drawing_the_unit_under_the_group_is_drawing_the_replicated_cloud(name):
    setup = _setup(name)
    state = train.create_state(setup, train.initial_points(setup))
    unit = np.asarray(state.params["points"])
    assert len(unit) == 60 // len(setup.group)
    plain = setup._replace(group=None)
    targets = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 32, 32)), jnp.float32)
    sigma = jnp.float32(1.5)

    def loss(setup_, points):
        params = {**state.params, "points": points}
        return forward.predict(setup_, params, state.batch_stats, targets, sigma).loss_B.sum()

    got = forward.predict(setup, state.params, state.batch_stats, targets, sigma)
    full = jnp.asarray(_replicated(unit, setup.group), jnp.float32)
    want = forward.predict(plain, {**state.params, "points": full}, state.batch_stats, targets, sigma)
    np.testing.assert_allclose(got.images_BxHxW, want.images_BxHxW, rtol=1e-5, atol=1e-6)
    # gradients: the unit's is the sum over copies of each copy's gradient turned back, R_g^T g
    g_unit = jax.grad(lambda p: loss(setup, p))(jnp.asarray(unit))
    g_full = np.asarray(jax.grad(lambda p: loss(plain, p))(full)).reshape(len(setup.group), -1, 3)
    np.testing.assert_allclose(g_unit, np.einsum("gji,guj->ui", setup.group, g_full), rtol=2e-3, atol=2e-4)


def test_gradients_reach_the_unit_from_every_copy_finite_differences():
    from holly_jax import render

    setup = _setup("c3", 3)  # one point per copy
    group = jnp.asarray(setup.group, jnp.float32)
    R = jnp.asarray(Rotation.from_euler("x", 70, degrees=True).as_matrix(), jnp.float32)[None]
    weight = jnp.arange(32.0)[None, None, :]  # an energy not symmetric in x

    def energy(cloud):
        images = render.render_poses(cloud, R, jnp.zeros((1, 2)), jnp.full((1,), 2.0), (32, 32))
        return jnp.sum(images**2 * weight)

    p0 = jnp.asarray([[0.5, 0.2, 0.1]], jnp.float32)
    g = np.asarray(jax.grad(lambda p: energy(forward.cloud(setup, p)))(p0))[0]
    eps = 1e-3
    fd = [
        (energy(forward.cloud(setup, p0.at[0, i].add(eps))) - energy(forward.cloud(setup, p0.at[0, i].add(-eps))))
        / (2 * eps)
        for i in range(3)
    ]
    np.testing.assert_allclose(g, np.asarray(fd), rtol=2e-2, atol=1e-3)

    # each copy's share (the others held fixed) is non-zero, and the shares add up to the whole
    def only(k):
        def f(p):
            copies = jnp.einsum("gij,uj->gui", group, p)
            held = jnp.stack([copies[j] if j == k else jax.lax.stop_gradient(copies[j]) for j in range(3)])
            return energy(held.reshape(-1, 3))

        return np.asarray(jax.grad(f)(p0))[0]

    shares = [only(k) for k in range(3)]
    assert all(np.abs(s).max() > 1e-3 * np.abs(g).max() for s in shares)
    np.testing.assert_allclose(sum(shares), g, rtol=1e-4, atol=1e-6)


def test_c1_is_the_plain_renderer():
    setup = _setup("c1", 60)
    assert setup.group is None
    p = jnp.ones((60, 3))
    assert forward.cloud(setup, p) is p  # the same array: the c1 path is untouched


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("model.symmetry", "c0", "config.model.symmetry: unknown point group 'c0'"),
        ("model.symmetry", "x5", "config.model.symmetry: unknown point group"),
        ("points.num", 61, "config.points.num (61) must be divisible by the order of c4 (4)"),
    ],
)
def test_bad_values(field, value, problem):
    cfg = tiny.get_config()
    cfg.model.symmetry = "c4"
    group, name = field.split(".")
    cfg[group][name] = value
    with pytest.raises(InputError, match=re.escape(problem)) as e:
        create_setup(cfg)
    assert "\n" not in str(e.value)


def test_a_run_learns_a_unit_and_writes_the_symmetric_cloud(tmp_path):
    cfg = tiny.get_config()
    cfg.model.symmetry, cfg.points.num = "c3", 60
    cfg.train.steps, cfg.train.report = 8, True
    cfg.refine.steps, cfg.refine.images, cfg.refine.batch_size = 4, 16, 8
    run = tmp_path / "run"
    pipeline.train_and_evaluate(cfg, run)
    full, unit = pointfile.read_points(run / "final.ply"), pointfile.read_points(run / "final_unit.ply")
    assert len(full) == 60 and len(unit) == 20
    np.testing.assert_allclose(full, _replicated(unit, symmetry.group_rotations("c3")), atol=1e-5)
    turned = full @ symmetry.group_rotations("c3")[1].T
    assert np.abs(turned[:, None] - full[None]).sum(-1).min(1).max() < 1e-4  # the cloud maps onto itself
    # the evaluation's detection sees the imposed group on the learned cloud, and draws its scores
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["detected_symmetry"] == "C3" and metrics["imposed_group_in_detected"] is True
    assert (run / "eval" / "symmetry.png").read_bytes()[:4] == b"\x89PNG"
    assert "eval/symmetry.png" in (run / "report.html").read_text()
