"""The method's forward pass: target images -> the network's poses -> the points drawn at them -> the L1 loss.

Used by training, refinement, evaluation and inference alike (docs/method.md
§2 and §4). ``predict`` is pure and traced inside the jitted steps;
``Predictor`` runs it over many images on the host side, in fixed batches.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holly_jax import compiler, loss, model, render, schedule
from holly_jax.setup import Setup


class Prediction(NamedTuple):
    loss_B: jax.Array  # per-image L1 after normalisation (of the winning hypothesis)
    pose: model.Pose  # the winning hypothesis per image
    sigma_B: jax.Array  # the sigma the points were drawn with
    images_BxHxW: jax.Array  # the points drawn at the predicted poses
    batch_stats: Any  # updated statistics (training) or None
    head_B: jax.Array  # the winning head per image (0 with one head)


def cloud(setup: Setup, points_Ux3: jax.Array) -> jax.Array:
    """The drawn cloud: the learned points, or under an imposed group every copy of them (G U x 3;
    docs/method.md §1)."""
    if setup.group is None:
        return points_Ux3
    return jnp.einsum(
        "gij,uj->gui", jnp.asarray(setup.group, points_Ux3.dtype), points_Ux3, precision=jax.lax.Precision.HIGHEST
    ).reshape(-1, 3)


def full_cloud(setup: Setup, points_Ux3) -> np.ndarray:
    """``cloud`` on the host, for files and pictures."""
    return np.asarray(cloud(setup, jnp.asarray(np.asarray(points_Ux3))))  # on this process's device alone


def predict(
    setup: Setup, params: Any, batch_stats: Any, targets_BxHxW: jax.Array, sigma_in: jax.Array, train: bool = False
) -> Prediction:
    """The network's poses for target images and the learned points drawn at them, scored against the targets.

    With K pose heads every hypothesis is drawn and scored, and each image keeps its best (winner takes
    all): the loss, and so the gradient, reaches only the winning head. With ``model.symmetrised_loss``
    each hypothesis (R, t) is also scored at its in-plane half turn (diag(-1, -1, 1) R, -t), which draws
    the same image turned by 180 degrees, and the lower loss counts (cryoAI).
    """
    mode = setup.cfg.train.normalise
    net, size = setup.net, setup.ds.size
    variables = {"params": params["net"], "batch_stats": batch_stats}
    inputs = loss.normalise(targets_BxHxW, mode)
    if train:
        pose, updates = net.apply(variables, inputs, train=True, mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
    else:
        pose, new_stats = net.apply(variables, inputs, train=False), None
    b, k = inputs.shape[0], net.num_heads
    sigma = pose.sigma_B if net.predict_sigma else jnp.full(pose.t_Bx2.shape[:-1], sigma_in)
    points = cloud(setup, params["points"])
    flip = bool(setup.cfg.model.symmetrised_loss)
    if k == 1 and not flip:
        images = render.render_poses(points, pose.R_Bx3x3, pose.t_Bx2, sigma, size)
        return Prediction(
            loss.l1_per_image(images, targets_BxHxW, mode), pose, sigma, images, new_stats, jnp.zeros((b,), jnp.int32)
        )
    if k == 1:  # one hypothesis: a hypothesis axis of length 1
        pose, sigma = model.Pose(*(None if f is None else f[:, None] for f in pose)), sigma[:, None]
    if flip:  # cryoAI's symmetrised loss: each hypothesis also at its in-plane half turn (the image turned 180)
        half_turn = jnp.diag(jnp.array([-1.0, -1.0, 1.0], pose.R_Bx3x3.dtype))
        both = lambda x, turned: jnp.concatenate([x, turned], axis=1)
        pose = model.Pose(
            both(
                pose.R_Bx3x3, jnp.einsum("ij,bkjl->bkil", half_turn, pose.R_Bx3x3, precision=jax.lax.Precision.HIGHEST)
            ),
            both(pose.rotation_raw, pose.rotation_raw),
            both(pose.t_Bx2, -pose.t_Bx2),
            None if pose.sigma_B is None else both(pose.sigma_B, pose.sigma_B),
        )
        sigma = both(sigma, sigma)
    h = pose.R_Bx3x3.shape[1]
    images = render.render_poses(
        points, pose.R_Bx3x3.reshape(b * h, 3, 3), pose.t_Bx2.reshape(b * h, 2), sigma.reshape(b * h), size
    ).reshape(b, h, *size)
    loss_BxH = loss.l1_per_image(images, targets_BxHxW[:, None], mode)
    head = jnp.argmin(loss_BxH, axis=1)
    best = lambda x: jnp.take_along_axis(x, head.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
    pose = model.Pose(*(None if f is None else best(f) for f in pose))
    return Prediction(best(loss_BxH), pose, best(sigma), best(images), new_stats, head % k)


def sigma_now(setup: Setup, sigmas_S: jax.Array, step: jax.Array) -> jax.Array:
    """The schedule's sigma after ``step`` steps (docs/method.md §5)."""
    return schedule.sigma_at(sigmas_S, step, setup.total_steps, bool(setup.cfg.sigma.interpolate))


def final_sigma(setup: Setup) -> float:
    """The schedule's sigma at the end of training: refinement, evaluation and inference draw at it."""
    return float(sigma_now(setup, setup.ds.arrays.sigmas_S, setup.total_steps))


def batched(fn: Callable[[int, int], Any], n: int, batch: int) -> Any:
    """Apply ``fn(start, stop)`` over [0, n) in chunks of ``batch`` and concatenate the results on the host."""
    outs = [jax.device_get(fn(start, min(start + batch, n))) for start in range(0, n, batch)]
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)


class Predictor:
    """Network poses for batches of images and the learned points drawn at them (jitted once)."""

    def __init__(self, setup: Setup, state: Any, batch: int = 32):
        self.setup, self.state, self.batch = setup, state, batch
        self._fn = compiler.jit(lambda st, images, sigma: predict(setup, st.params, st.batch_stats, images, sigma))

    def __call__(self, images_BxHxW: np.ndarray, sigma: float) -> Prediction:
        images = np.asarray(images_BxHxW, np.float32)

        def chunk(start, stop):
            x = images[start:stop]
            x = np.concatenate([x, np.repeat(x[-1:], self.batch - len(x), 0)]) if len(x) < self.batch else x
            out = self._fn(self.state, jnp.asarray(x), jnp.float32(sigma))
            return out._replace(batch_stats=None)

        return batched(chunk, len(images), self.batch)
