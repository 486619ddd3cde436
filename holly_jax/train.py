"""The training phase: one TrainState, the jitted train and score steps, and the phase that drives them.

The state holds the CNN parameters and batch statistics, the point cloud, the
optax state, the step and the adaptive learning-rate scale. A step takes its
batch (item indices, or FITS images gathered on a background thread), makes
the targets at the schedule's current sigma inside the jitted step (sigma is
data, so the schedule never recompiles), runs the forward pass and updates
everything with AdamW (docs/method.md §5). The loop waits on the device only
at log and save intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

from holly_jax import (
    checkpoints,
    compiler,
    data,
    faults,
    forward,
    input_pipeline,
    loop,
    optim,
    outputs,
    plots,
    pointfile,
    points,
)
from holly_jax.setup import Setup, init_seed


class TrainState(train_state.TrainState):
    batch_stats: Any
    adapt: optim.AdaptState


def initial_points(setup: Setup) -> np.ndarray:
    cfg = setup.cfg
    if setup.pose_only:
        return pointfile.read_points(cfg.points.fixed)
    order = 1 if setup.group is None else len(setup.group)
    return points.init_points(int(cfg.points.num) // order, cfg.points.init, init_seed(cfg))


def create_state(setup: Setup, points_Nx3: np.ndarray) -> TrainState:
    h, w = setup.ds.size
    variables = jax.jit(setup.net.init, static_argnames="train")(
        jax.random.key(init_seed(setup.cfg)), jnp.zeros((1, h, w)), train=False
    )
    pts = jnp.asarray(points_Nx3, jnp.float32)
    return TrainState.create(
        apply_fn=setup.net.apply,
        params={"net": variables["params"], "points": pts},
        tx=optim.make_optimizer(setup.cfg, setup.pose_only, setup.total_steps),
        batch_stats=variables["batch_stats"],
        adapt=optim.initial_adapt(pts),
    )


class Steps(NamedTuple):
    train: Callable  # (state, arrays, batch) -> (state, metrics)
    score: Callable  # (state, arrays, batch, valid_B) -> sums of the loss and sigma over the valid images
    sample: Callable  # (state, arrays, batch) -> (targets, predicted images), for pictures


def make_steps(setup: Setup) -> Steps:
    """The jitted steps, closing over the run's static settings. Each takes a host batch (item indices, or
    FITS images) split over the devices."""
    cfg, b = setup.cfg, setup.batch_size

    def targets_at(state, arrays, batch):
        sigma_in = forward.sigma_now(setup, arrays.sigmas_S, state.step)
        return data.targets(setup.ds, arrays, batch, sigma_in, state.step), sigma_in

    def train_step(state: TrainState, arrays: data.DataArrays, batch: jax.Array):
        step = state.step
        batch = jax.lax.with_sharding_constraint(batch, setup.batch_sharded())  # each device takes its share
        targets, sigma_in = targets_at(state, arrays, batch)

        def loss_fn(params):
            out = forward.predict(setup, params, state.batch_stats, targets, sigma_in, train=True)
            return jnp.sum(out.loss_B), (out.sigma_B, out.batch_stats, out.head_B)

        (total, (sigma_out, batch_stats, head)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        deltas, opt_state = state.tx.update(grads, state.opt_state, state.params)
        deltas = jax.tree.map(lambda d: d * state.adapt.scale, deltas)
        params = optax.apply_updates(state.params, deltas)
        adapt = optim.adapt_update(state.adapt, params["points"], step + 1, cfg) if cfg.optim.adapt else state.adapt
        new_state = state.replace(
            step=step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats, adapt=adapt
        )
        metrics = {
            "train_loss": total / b,
            "sigma_in": sigma_in,
            "sigma_out": jnp.mean(sigma_out),
            "grad_norm": optax.tree.norm(grads),
            "lr_scale": state.adapt.scale,
        }
        if setup.net.num_heads > 1:  # how often each head wins
            metrics.update({f"head{k}_wins": jnp.mean(head == k) for k in range(setup.net.num_heads)})
        return new_state, metrics

    def score_step(state: TrainState, arrays: data.DataArrays, batch: jax.Array, valid_B: jax.Array):
        batch = jax.lax.with_sharding_constraint(batch, setup.batch_sharded())
        targets, sigma_in = targets_at(state, arrays, batch)
        out = forward.predict(setup, state.params, state.batch_stats, targets, sigma_in)
        return {
            "loss_sum": jnp.sum(out.loss_B * valid_B),
            "sigma_out_sum": jnp.sum(out.sigma_B * valid_B),
            "count": jnp.sum(valid_B),
        }

    def sample_step(state: TrainState, arrays: data.DataArrays, batch: jax.Array):
        targets, sigma_in = targets_at(state, arrays, batch)
        return targets, forward.predict(setup, state.params, state.batch_stats, targets, sigma_in).images_BxHxW

    rep = setup.replicated()
    return Steps(
        compiler.jit(train_step, donate_argnums=0, out_shardings=(rep, rep)),
        compiler.jit(score_step, out_shardings=rep),
        compiler.jit(sample_step),
    )


def split_loss(setup: Setup, steps: Steps, state: TrainState, split: str = "test") -> dict[str, float]:
    """Mean per-image L1 and predicted sigma over a split, in padded batches of the training size."""
    idx = setup.ds.splits[split]
    if len(idx) == 0:
        return {}
    b, step = setup.batch_size, int(state.step)
    pad = (-len(idx)) % b
    idx_p = np.concatenate([idx, np.full(pad, idx[0])]).astype(np.int32)
    valid = np.concatenate([np.ones(len(idx)), np.zeros(pad)]).astype(np.float32)
    sums = None
    for start in range(0, len(idx_p), b):
        batch = setup.split(input_pipeline.host_batch(setup, idx_p[start : start + b], step))
        out = steps.score(state, setup.ds.arrays, batch, setup.split(valid[start : start + b]))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return {
        f"{split}_loss": float(sums["loss_sum"] / sums["count"]),
        f"{split}_sigma_out": float(sums["sigma_out_sum"] / sums["count"]),
    }


def sample_pairs(setup: Setup, steps: Steps, state: TrainState) -> tuple[np.ndarray, np.ndarray]:
    """Eight held-out targets and the network's images of them, on the host (every process runs this)."""
    idx = setup.ds.splits["test"] if len(setup.ds.splits["test"]) else setup.ds.splits["train"]
    batch = setup.replicate(input_pipeline.host_batch(setup, idx[:8], int(state.step)))
    return jax.device_get(steps.sample(state, setup.ds.arrays, batch))


def save_pictures(
    folder: Path, records: list[dict], grid: np.ndarray, scale: int, cloud_Nx3: np.ndarray, step: int
) -> None:
    """The pictures regenerated at each save interval: curves, input/output pairs, the cloud in three views."""
    plots.save_curves(folder / "curves.png", records)
    faults.point("pictures")
    plots.save_png(folder / "pairs.png", grid, scale=scale)
    plots.save_cloud_views(folder / "cloud.png", cloud_Nx3, title=f"step {step}")


def restore_or_init(setup: Setup, mngr: ocp.CheckpointManager, workdir: Path, move_damaged: bool = True) -> TrainState:
    """The latest checkpoint that restores if there is one (see ``checkpoints.restore_latest``), else a fresh
    state (and its initial points written); on every device of the mesh."""
    state = setup.replicate(create_state(setup, initial_points(setup)))
    restored = checkpoints.restore_latest(mngr, state, move_damaged=move_damaged)
    if restored is not None:
        return restored
    if jax.process_index() == 0:
        outputs.write_shape(workdir, "initial", forward.full_cloud(setup, state.params["points"]), subfolders=False)
    return state


def train(
    setup: Setup, state: TrainState, mngr: ocp.CheckpointManager, workdir: Path, rec: outputs.Recorder
) -> TrainState:
    """Train from ``state`` to the run's last step: a record every ``train.log_every`` steps (with the test
    loss), a checkpoint, point files and pictures every ``train.save_every`` steps."""
    cfg, start = setup.cfg, int(state.step)
    steps = make_steps(setup)
    lr, plr = optim.learning_rates(cfg, setup.total_steps)
    rec.say(
        f"{len(setup.ds.splits['train'])} training images, batch {setup.batch_size} over {setup.mesh.size} "
        f"device(s), {setup.steps_per_epoch} steps per epoch, {setup.total_steps} steps in all"
        + (f", resuming at step {start}" if start else "")
    )

    def report(done: int, means: dict[str, float], rate: float, state: TrainState) -> dict[str, Any]:
        scale = means["lr_scale"]
        record = {"step": done, "epoch": (done - 1) // setup.steps_per_epoch}
        record.update({k: v for k, v in means.items() if k != "lr_scale"})
        record.update(
            {
                "lr": float(lr(done - 1)) * scale,
                "plr": 0.0 if setup.pose_only else float(plr(done - 1)) * scale,
                "images_per_s": rate,
            }
        )
        record.update(split_loss(setup, steps, state))
        rec.write(record)
        test = f"{record['test_loss']:.4g}" if "test_loss" in record else "-"
        rec.say(
            f"step {done}/{setup.total_steps} epoch {record['epoch']}: train loss {record['train_loss']:.4g}, "
            f"test loss {test}, sigma {record['sigma_in']:.3g} -> {record['sigma_out']:.3g}, {rate:.0f} images/s"
        )
        return record

    def save(done: int, state: TrainState) -> None:
        rec.settle()  # the last save's pictures are drawn (or their error raised) before the next checkpoint
        checkpoints.save(mngr, done, state)
        pairs = sample_pairs(setup, steps, state)  # a computation on every process's devices
        if rec.primary:  # the point files now, the pictures on the recorder's thread while the steps go on
            epoch = (done - 1) // setup.steps_per_epoch
            cloud = np.asarray(forward.full_cloud(setup, state.params["points"]))
            outputs.write_shape(workdir, f"shape_e{epoch}_s{done}", cloud)
            grid, records, scale = plots.pairs(*pairs), rec.records(), plots.enlargement(setup.ds.size)
            rec.image("inputs_outputs", grid, done)
            rec.later(lambda: save_pictures(workdir / "pictures", records, grid, scale, cloud, done))

    spec = loop.Loop(
        "training", setup.total_steps, setup.batch_size, int(cfg.train.log_every), int(cfg.train.save_every)
    )
    state = loop.drive(
        spec,
        state,
        start,
        lambda s, batch: steps.train(s, setup.ds.arrays, batch),
        input_pipeline.train_batches(setup, start),
        report,
        save,
        rec.primary,
    )
    mngr.wait_until_finished()
    return state
