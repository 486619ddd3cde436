"""Run by test_sharding.py in a fresh process with 8 simulated CPU devices (XLA_FLAGS set by the test).

Trains a few steps of the tiny config on one device and on all eight (the
batch split over a "data" mesh axis) and prints how far the two runs differ.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import tiny  # noqa: E402
from holly_jax import forward, input_pipeline, simulate, train  # noqa: E402
from holly_jax.setup import create_setup  # noqa: E402

STEPS = 3


def first_gradient(setup, state, idx):
    """The gradient of the first step's loss, with the batch split as the train step splits it."""
    sim = setup.ds.arrays
    sigma = forward.sigma_now(setup, sim.sigmas_S, 0)

    def loss(params):
        targets = simulate.render_targets(
            sim.gt_Nx3, sim.table, idx, jnp.full(idx.shape, sigma), setup.ds.opts, setup.ds.size
        )
        return jnp.sum(forward.predict(setup, params, state.batch_stats, targets, sigma, train=True).loss_B)

    return jax.jit(jax.grad(loss))(state.params)


def trained(devices):
    cfg = tiny.get_config()
    cfg.data.object = str(Path(__file__).resolve().parents[1] / "objs" / "asymmetric.obj")
    cfg.model.predict_sigma = True
    setup = create_setup(cfg, devices)
    state = jax.device_put(train.create_state(setup, train.initial_points(setup)), setup.replicated())
    fns = train.make_steps(setup)
    batch = next(input_pipeline.train_batches(setup, 0))
    grads = jax.device_get(first_gradient(setup, state, batch))
    losses = []
    for _ in range(STEPS):
        state, m = fns.train(state, setup.ds.arrays, batch)
        losses.append(float(m["train_loss"]))
    return state, grads, losses, train.split_loss(setup, fns, state)["test_loss"], cfg.optim.lr


def main():
    one, g1, loss1, test1, lr = trained(jax.devices()[:1])
    many, g8, loss8, test8, _ = trained(jax.devices())
    norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
    grad_rel = norm(jax.tree.map(lambda a, b: a - b, g8, g1)) / norm(g1)
    max_abs = lambda a, b: max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
    points = np.asarray(one.params["points"])
    print(
        json.dumps(
            {
                "devices": [
                    len(one.params["points"].sharding.device_set),
                    len(many.params["points"].sharding.device_set),
                ],
                "gradient_rel": grad_rel,
                "points_rel": float(
                    np.max(np.abs(np.asarray(many.params["points"]) - points)) / np.max(np.abs(points))
                ),
                "net_max_abs": max_abs(one.params["net"], many.params["net"]),
                "batch_stats_max_abs": max_abs(one.batch_stats, many.batch_stats),
                "adam_bound": 2 * lr * STEPS,
                "loss": [loss1, loss8],
                "test_loss": [test1, test8],
            }
        )
    )


if __name__ == "__main__":
    main()
