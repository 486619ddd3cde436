"""Several pose heads: winner takes all, and one head is the original path."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holly_jax import forward, loss, model, pipeline, render, simulate, train
from holly_jax.setup import create_setup

REPO = Path(__file__).resolve().parents[1]


def _run(num_heads, **model_fields):
    cfg = tiny.get_config()
    cfg.data.object = str(REPO / "objs" / "asymmetric.obj")
    cfg.model.num_heads = num_heads
    for k, v in model_fields.items():
        cfg.model[k] = v
    setup = create_setup(cfg)
    return setup, train.create_state(setup, train.initial_points(setup))


def _targets(setup, n):
    sim = setup.ds.arrays
    return simulate.render_targets(
        sim.gt_Nx3, sim.table, jnp.arange(n), jnp.full((n,), 2.0), setup.ds.opts, setup.ds.size
    )


@pytest.mark.parametrize("predict_sigma", [False, True])
def test_gradient_reaches_only_the_winning_head(predict_sigma):
    k = 4
    setup, state = _run(k, predict_sigma=predict_sigma)
    targets = _targets(setup, 3)
    out = jax.jit(lambda p: forward.predict(setup, p, state.batch_stats, targets, jnp.float32(2.0), train=True))(
        state.params
    )  # jitted: compiled once, not op by op
    winners = set(np.asarray(out.head_B).tolist())
    grads = jax.jit(
        jax.grad(
            lambda p: jnp.sum(
                forward.predict(setup, p, state.batch_stats, targets, jnp.float32(2.0), train=True).loss_B
            )
        )
    )(state.params)
    g = np.asarray(grads["net"]["fc2"]["kernel"]).reshape(256, k, -1)
    for head in range(k):
        if head in winners:
            assert np.abs(g[:, head]).max() > 0
        else:
            assert np.all(g[:, head] == 0), f"head {head} lost every image but got a gradient"
    assert len(winners) < k  # the check above tested at least one losing head


def test_winner_is_the_hypothesis_with_the_lowest_loss():
    setup, state = _run(3)
    targets = _targets(setup, 4)
    out = jax.jit(lambda p: forward.predict(setup, p, state.batch_stats, targets, jnp.float32(2.0)))(state.params)
    variables = {"params": state.params["net"], "batch_stats": state.batch_stats}
    pose = jax.jit(lambda v: setup.net.apply(v, loss.normalise(targets, "basic"), train=False))(variables)
    assert pose.R_Bx3x3.shape == (4, 3, 3, 3)
    for h in range(3):  # every head drawn on its own
        img = render.render_poses(
            state.params["points"], pose.R_Bx3x3[:, h], pose.t_Bx2[:, h], jnp.full((4,), 2.0), setup.ds.size
        )
        per = loss.l1_per_image(img, targets, "basic")
        assert np.all(np.asarray(out.loss_B) <= np.asarray(per) + 1e-4)
        chosen = np.asarray(out.head_B) == h
        np.testing.assert_allclose(np.asarray(out.loss_B)[chosen], np.asarray(per)[chosen], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out.pose.R_Bx3x3)[chosen], np.asarray(pose.R_Bx3x3[:, h])[chosen])


def test_one_head_is_the_original_network_and_path():
    setup, state = _run(1)
    default = model.HollyNet(predict_sigma=False, max_trans=0.1)
    original = default.init(jax.random.key(setup.cfg.seed), jnp.zeros((1, *setup.ds.size)), train=False)
    for a, b in zip(jax.tree.leaves(original["params"]), jax.tree.leaves(state.params["net"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert state.params["net"]["fc2"]["kernel"].shape == (256, 5)
    targets = _targets(setup, 4)
    out = forward.predict(setup, state.params, state.batch_stats, targets, jnp.float32(2.0))
    pose = default.apply(original, loss.normalise(targets, "basic"), train=False)
    images = render.render_poses(state.params["points"], pose.R_Bx3x3, pose.t_Bx2, jnp.full((4,), 2.0), setup.ds.size)
    np.testing.assert_array_equal(np.asarray(out.images_BxHxW), np.asarray(images))
    np.testing.assert_array_equal(np.asarray(out.loss_B), np.asarray(loss.l1_per_image(images, targets, "basic")))
    assert not np.any(np.asarray(out.head_B))


def test_training_with_heads_records_how_often_each_wins(tmp_path):
    cfg = tiny.get_config()
    cfg.data.object = str(REPO / "objs" / "asymmetric.obj")
    cfg.model.num_heads = 4
    cfg.train.epochs = 1
    cfg.train.report = False
    pipeline.train_and_evaluate(cfg, tmp_path)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    wins = [record[f"head{k}_wins"] for k in range(4)]
    assert sum(wins) == pytest.approx(1.0) and all(0 <= w <= 1 for w in wins)


@pytest.mark.parametrize("num_heads", [1, 3])
def test_the_symmetrised_loss_keeps_the_better_of_each_pose_and_its_half_turn(num_heads):
    setup, state = _run(num_heads, symmetrised_loss=True)
    plain_setup, _ = _run(num_heads)
    targets, sigma = _targets(setup, 6), jnp.float32(2.0)
    out = jax.jit(lambda p: forward.predict(setup, p, state.batch_stats, targets, sigma))(state.params)
    plain = jax.jit(lambda p: forward.predict(plain_setup, p, state.batch_stats, targets, sigma))(state.params)
    # independently: the plain winner's pose turned half about the optical axis, drawn and scored
    half = np.diag([-1.0, -1.0, 1.0]).astype(np.float32)
    variables = {"params": state.params["net"], "batch_stats": state.batch_stats}
    pose = setup.net.apply(variables, loss.normalise(targets, "basic"), train=False)
    R = np.asarray(pose.R_Bx3x3).reshape(6, num_heads, 3, 3)
    t = np.asarray(pose.t_Bx2).reshape(6, num_heads, 2)
    R_all, t_all = np.concatenate([R, half @ R], 1), np.concatenate([t, -t], 1)
    images = render.render_poses(
        state.params["points"],
        jnp.asarray(R_all.reshape(-1, 3, 3)),
        jnp.asarray(t_all.reshape(-1, 2)),
        jnp.full((6 * 2 * num_heads,), 2.0),
        setup.ds.size,
    ).reshape(6, 2 * num_heads, *setup.ds.size)
    losses = np.asarray(loss.l1_per_image(images, targets[:, None], "basic"))
    np.testing.assert_allclose(np.asarray(out.loss_B), losses.min(1), rtol=1e-5)
    assert np.all(np.asarray(out.loss_B) <= np.asarray(plain.loss_B) + 1e-5)
    assert np.all(np.asarray(out.head_B) < num_heads)
    # the half turns win somewhere (else this tested nothing), and training reaches the network through them
    turned = losses[:, num_heads:].min(1) < losses[:, :num_heads].min(1)
    assert np.any(turned)
    grads = jax.jit(
        jax.grad(
            lambda p: jnp.sum(
                forward.predict(setup, p, state.batch_stats, targets, sigma, train=True).loss_B * jnp.asarray(turned)
            )
        )
    )(state.params)
    assert np.abs(np.asarray(grads["net"]["fc2"]["kernel"])).max() > 0
