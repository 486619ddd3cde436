"""Training: one TrainState, the jitted train and eval steps, and the loop that checkpoints and writes outputs.

The state holds the CNN parameters and batch statistics, the point cloud, the
optax state, the step and the adaptive learning-rate scale. A step takes its
batch (simulated item indices, or FITS images gathered on a background
thread) from the epoch's shuffled order, makes the targets at the schedule's
current sigma inside the jitted step (sigma is data, so the schedule never
recompiles), runs the CNN, renders the points at the predicted poses and
updates everything with AdamW. The loop only waits on the device at log and
save intervals.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from holly_jax import data, imagesets, loss, model, outputs, plots, pointfile, points, render, schedule, simulate
from holly_jax.errors import InputError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class AdaptState(NamedTuple):
    """Reduce-on-plateau of both learning rates, fed by the RMS movement of the points."""
    scale: jax.Array  # multiplies both learning rates
    anchor_Nx3: jax.Array  # the points at the last check
    best: jax.Array  # smallest movement seen
    bad: jax.Array  # checks since the movement last improved


class TrainState(train_state.TrainState):
    batch_stats: Any
    adapt: AdaptState


class Run(NamedTuple):
    """A run's static settings, derived once from the config and the data."""
    cfg: ml_collections.ConfigDict
    ds: data.Dataset
    net: model.HollyNet
    batch_size: int  # the global batch: config batch size times the number of processes
    steps_per_epoch: int
    total_steps: int
    pose_only: bool
    mesh: Mesh  # devices along one "data" axis: the batch is split over them, the state replicated

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Values the data module does not see; each problem is a one-line InputError."""
    choices = (("train.normalise", cfg.train.normalise, loss.NORMALISATIONS),
               ("model.rotation", cfg.model.rotation, tuple(model.ROTATION_HEADS)),
               ("model.dtype", cfg.model.dtype, tuple(DTYPES)),
               ("points.init", cfg.points.init, points.INITS))
    for name, value, allowed in choices:
        if value not in allowed:
            raise InputError(None, f"config.{name}: unknown value {value!r}; expected one of {allowed}")
    for name in ("log_every", "save_every", "max_to_keep"):
        if cfg.train[name] <= 0:
            raise InputError(None, f"config.train.{name} must be positive, got {cfg.train[name]}")
    if cfg.train.epochs <= 0 and cfg.train.steps <= 0:
        raise InputError(None, "config.train.epochs or config.train.steps must be positive")
    for name in ("lr", "plr"):
        value = cfg.optim[name]
        if value is not None and not value > 0:
            raise InputError(None, f"config.optim.{name} must be positive, got {value}")
    if not 0.0 <= cfg.optim.decay_fraction <= 1.0:
        raise InputError(None, f"config.optim.decay_fraction must be in [0, 1], got {cfg.optim.decay_fraction}")
    if cfg.optim.adapt and cfg.optim.pinterval <= 0:
        raise InputError(None, f"config.optim.pinterval must be positive, got {cfg.optim.pinterval}")
    for name in ("steps", "images", "batch_size"):
        if cfg.refine[name] < 0:
            raise InputError(None, f"config.refine.{name} must not be negative, got {cfg.refine[name]}")
    for name in ("lr", "plr"):
        value = cfg.refine[name]
        if value is not None and not value > 0:
            raise InputError(None, f"config.refine.{name} must be positive, got {value}")


def setup(cfg: ml_collections.ConfigDict, devices: list | None = None, cache_dir: Path | None = None) -> Run:
    """Check the config, load the data and fix the run's shape; the batch is split over ``devices``
    (default: all devices of all processes)."""
    check_config(cfg)
    mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))
    b = int(cfg.train.batch_size) * jax.process_count()
    if b % mesh.size:
        raise InputError(None, f"batch size {b} does not split evenly over {mesh.size} devices")
    ds = data.load(cfg, b, cache_dir)
    ds = ds._replace(data=jax.device_put(ds.data, NamedSharding(mesh, P())))
    spe = len(ds.splits["train"]) // b
    total = int(cfg.train.steps) if cfg.train.steps > 0 else int(cfg.train.epochs) * spe
    if cfg.model.num_heads < 1:
        raise InputError(None, f"config.model.num_heads must be at least 1, got {cfg.model.num_heads}")
    net = model.HollyNet(predict_sigma=bool(cfg.model.predict_sigma), rotation=cfg.model.rotation,
                         max_trans=float(cfg.data.max_trans), dtype=DTYPES[cfg.model.dtype],
                         num_heads=int(cfg.model.num_heads))
    return Run(cfg, ds, net, b, spe, total, bool(cfg.points.fixed), mesh)


def learning_rates(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.Schedule, optax.Schedule]:
    """Network and point learning rates by step: constant, then (``optim.decay_fraction`` > 0) a linear
    fall to zero over that last fraction of the run."""
    o = cfg.optim
    plr = o.lr if o.plr is None else o.plr
    return (decaying(o.lr, total_steps, o.decay_fraction), decaying(plr, total_steps, o.decay_fraction))


def decaying(lr: float, total_steps: int, fraction: float) -> optax.Schedule:
    """``lr``, falling linearly to zero over the last ``fraction`` of ``total_steps``."""
    decay_steps = int(round(float(fraction) * total_steps))
    lr = float(lr)
    if decay_steps <= 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, decay_steps)],
                                [total_steps - decay_steps])


def make_optimizer(cfg: ml_collections.ConfigDict, pose_only: bool, total_steps: int) -> optax.GradientTransformation:
    """AdamW with one learning rate for the network and one for the points (frozen in pose-only mode)."""
    o = cfg.optim
    adamw = lambda lr: optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    lr, plr = learning_rates(cfg, total_steps)
    return optax.multi_transform({"net": adamw(lr), "points": optax.set_to_zero() if pose_only else adamw(plr)},
                                 lambda params: {"net": "net", "points": "points"})


def initial_points(run: Run) -> np.ndarray:
    cfg = run.cfg
    if run.pose_only:
        return pointfile.read_points(cfg.points.fixed)
    return points.init_points(int(cfg.points.num), cfg.points.init, int(cfg.seed))


def create_state(run: Run, points_Nx3: np.ndarray) -> TrainState:
    h, w = run.ds.size
    variables = jax.jit(run.net.init, static_argnames="train")(
        jax.random.key(run.cfg.seed), jnp.zeros((1, h, w)), train=False)
    pts = jnp.asarray(points_Nx3, jnp.float32)
    adapt = AdaptState(jnp.float32(1.0), jnp.copy(pts), jnp.float32(jnp.inf), jnp.int32(0))  # no shared buffer
    return TrainState.create(apply_fn=run.net.apply, params={"net": variables["params"], "points": pts},
                             tx=make_optimizer(run.cfg, run.pose_only, run.total_steps), batch_stats=variables["batch_stats"],
                             adapt=adapt)


def adapt_update(a: AdaptState, points_Nx3: jax.Array, step: jax.Array, cfg: ml_collections.ConfigDict) -> AdaptState:
    """Every ``pinterval`` steps: the RMS point movement since the last check feeds a plateau counter."""
    def check(a: AdaptState) -> AdaptState:
        rmsd = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(points_Nx3 - a.anchor_Nx3), axis=-1)))
        improved = rmsd < a.best * (1.0 - 1e-4)
        bad = jnp.where(improved, 0, a.bad + 1)
        reduce = bad > cfg.optim.adapt_patience
        return AdaptState(jnp.where(reduce, a.scale * cfg.optim.adapt_factor, a.scale), points_Nx3,
                          jnp.where(improved, rmsd, a.best), jnp.where(reduce, 0, bad))
    return jax.lax.cond(step % cfg.optim.pinterval == 0, check, lambda a: a, a)


class Prediction(NamedTuple):
    loss_B: jax.Array  # per-image L1 after normalisation (of the winning hypothesis)
    pose: model.Pose  # the winning hypothesis per image
    sigma_B: jax.Array  # the sigma the points were drawn with
    images_BxHxW: jax.Array  # the points drawn at the predicted poses
    batch_stats: Any  # updated statistics (training) or None
    head_B: jax.Array  # the winning head per image (0 with one head)


def predict(run: Run, params: Any, batch_stats: Any, targets_BxHxW: jax.Array, sigma_in: jax.Array,
            train: bool = False) -> Prediction:
    """The network's poses for target images and the learned points drawn at them, scored against the targets.

    With K pose heads every hypothesis is drawn and scored, and each image keeps its best (winner takes
    all): the loss, and so the gradient, reaches only the winning head.
    """
    mode = run.cfg.train.normalise
    variables = {"params": params["net"], "batch_stats": batch_stats}
    inputs = loss.normalise(targets_BxHxW, mode)
    if train:
        pose, updates = run.net.apply(variables, inputs, train=True, mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
    else:
        pose, new_stats = run.net.apply(variables, inputs, train=False), None
    b, k = inputs.shape[0], run.net.num_heads
    sigma = pose.sigma_B if run.net.predict_sigma else jnp.full(pose.t_Bx2.shape[:-1], sigma_in)
    if k == 1:
        images = render.render_poses(params["points"], pose.R_Bx3x3, pose.t_Bx2, sigma, run.ds.size)
        return Prediction(loss.l1_per_image(images, targets_BxHxW, mode), pose, sigma, images, new_stats,
                          jnp.zeros((b,), jnp.int32))
    images = render.render_poses(params["points"], pose.R_Bx3x3.reshape(b * k, 3, 3), pose.t_Bx2.reshape(b * k, 2),
                                 sigma.reshape(b * k), run.ds.size).reshape(b, k, *run.ds.size)
    loss_BxK = loss.l1_per_image(images, targets_BxHxW[:, None], mode)
    head = jnp.argmin(loss_BxK, axis=1)
    best = lambda x: jnp.take_along_axis(x, head.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
    pose = model.Pose(*(None if f is None else best(f) for f in pose))
    return Prediction(best(loss_BxK), pose, best(sigma), best(images), new_stats, head)


def sigma_now(run: Run, sigmas_S: jax.Array, step: jax.Array) -> jax.Array:
    """The schedule's sigma after ``step`` steps."""
    return schedule.sigma_at(sigmas_S, step, run.total_steps, bool(run.cfg.sigma.interpolate))


class Steps(NamedTuple):
    train: Callable  # (state, data, batch) -> (state, metrics)
    evaluate: Callable  # (state, data, batch, valid_B) -> sums
    sample: Callable  # (state, data, batch) -> (targets, predicted images), for pictures


def targets_for(run: Run, sim: Any, batch: jax.Array, sigma_in: jax.Array, step: jax.Array) -> jax.Array:
    """A batch's target images: simulated items or localisation particles drawn at sigma_in, or FITS images
    (blurred when the data folder holds one set)."""
    if run.ds.source == "simulated":
        return simulate.render_targets(sim.gt_Nx3, sim.table, batch, jnp.full(batch.shape, sigma_in), run.ds.opts,
                                       run.ds.size)
    if run.ds.source == "locs":
        return data.render_particles(sim, batch, sigma_in, step, run.ds.size)
    return imagesets.blur(batch, sigma_in) if run.ds.images.blur else batch


def make_steps(run: Run) -> Steps:
    """The jitted train and eval steps, closing over the run's static settings. Each takes a host batch
    (item indices, or FITS images) split over the devices."""
    cfg, b = run.cfg, run.batch_size

    def train_step(state: TrainState, sim, batch: jax.Array):
        step = state.step
        batch = jax.lax.with_sharding_constraint(batch, run.batch_sharded())  # each device takes its share
        sigma_in = sigma_now(run, sim.sigmas_S, step)
        targets = targets_for(run, sim, batch, sigma_in, step)

        def loss_fn(params):
            out = predict(run, params, state.batch_stats, targets, sigma_in, train=True)
            return jnp.sum(out.loss_B), (out.sigma_B, out.batch_stats, out.head_B)

        (total, (sigma_out, batch_stats, head)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        deltas, opt_state = state.tx.update(grads, state.opt_state, state.params)
        deltas = jax.tree.map(lambda d: d * state.adapt.scale, deltas)
        params = optax.apply_updates(state.params, deltas)
        adapt = adapt_update(state.adapt, params["points"], step + 1, cfg) if cfg.optim.adapt else state.adapt
        new_state = state.replace(step=step + 1, params=params, opt_state=opt_state,
                                  batch_stats=batch_stats, adapt=adapt)
        metrics = {"train_loss": total / b, "sigma_in": sigma_in, "sigma_out": jnp.mean(sigma_out),
                   "grad_norm": optax.global_norm(grads), "lr_scale": state.adapt.scale}
        if run.net.num_heads > 1:  # how often each head wins
            metrics.update({f"head{k}_wins": jnp.mean(head == k) for k in range(run.net.num_heads)})
        return new_state, metrics

    def eval_step(state: TrainState, sim, batch: jax.Array, valid_B: jax.Array):
        batch = jax.lax.with_sharding_constraint(batch, run.batch_sharded())
        sigma_in = sigma_now(run, sim.sigmas_S, state.step)
        out = predict(run, state.params, state.batch_stats, targets_for(run, sim, batch, sigma_in, state.step),
                      sigma_in)
        return {"loss_sum": jnp.sum(out.loss_B * valid_B), "sigma_out_sum": jnp.sum(out.sigma_B * valid_B),
                "count": jnp.sum(valid_B)}

    def sample_step(state: TrainState, sim, batch: jax.Array):
        sigma_in = sigma_now(run, sim.sigmas_S, state.step)
        targets = targets_for(run, sim, batch, sigma_in, state.step)
        return targets, predict(run, state.params, state.batch_stats, targets, sigma_in).images_BxHxW

    rep = run.replicated()
    return Steps(jax.jit(train_step, donate_argnums=0, out_shardings=(rep, rep)), jax.jit(eval_step, out_shardings=rep),
                 jax.jit(sample_step))


def epoch_order(run: Run, epoch: int) -> np.ndarray:
    """The training items of one epoch in their shuffled order: a function of (seed, epoch) only."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(run.cfg.seed), 2), epoch)
    train_idx = run.ds.splits["train"]
    return train_idx[np.asarray(jax.random.permutation(key, len(train_idx)))]


def schedule_entry(run: Run, step: int) -> int:
    """The index of the sigma-list entry the stepped schedule takes at ``step`` (as schedule.sigma_at)."""
    last = int(run.ds.data.sigmas_S.shape[0]) - 1
    total = max(run.total_steps, 1)
    return min((min(max(step, 0), total) * last) // total, last)


def host_batch(run: Run, items: np.ndarray, step: int) -> np.ndarray:
    """What the step takes for these items at this step: the indices, or the FITS images themselves."""
    if run.ds.source != "fits":
        return np.asarray(items, np.int32)
    return np.asarray(run.ds.images.images_for_entry(schedule_entry(run, step))[np.asarray(items)])


def train_batches(run: Run, start: int, prefetch: int = 2) -> Iterator[jax.Array]:
    """Device batches for steps start, start + 1, ...: gathered on a background thread, ``prefetch`` ahead."""
    def produce():
        order, order_epoch = None, -1
        for step in range(start, run.total_steps):
            epoch = step // run.steps_per_epoch
            if epoch != order_epoch:
                order, order_epoch = epoch_order(run, epoch), epoch
            items = order[(step % run.steps_per_epoch) * run.batch_size:][:run.batch_size]
            yield jax.device_put(host_batch(run, items, step), run.batch_sharded())
    return prefetched(produce(), prefetch)


def prefetched(iterator: Iterator, depth: int) -> Iterator:
    """Run an iterator on a daemon thread, ``depth`` items ahead; its exceptions surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in iterator:
                q.put(item)
            q.put(done)
        except BaseException as e:  # hand the error to the consumer
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def score_split(run: Run, steps: Steps, state: TrainState, split: str = "test") -> dict[str, float]:
    """Mean per-image L1 and predicted sigma over a split, in padded batches of the training size."""
    idx = run.ds.splits[split]
    if len(idx) == 0:
        return {}
    b, step = run.batch_size, int(state.step)
    pad = (-len(idx)) % b
    idx_p = np.concatenate([idx, np.full(pad, idx[0])]).astype(np.int32)
    valid = np.concatenate([np.ones(len(idx)), np.zeros(pad)]).astype(np.float32)
    sums = None
    for start in range(0, len(idx_p), b):
        batch = jax.device_put(host_batch(run, idx_p[start:start + b], step), run.batch_sharded())
        out = steps.evaluate(state, run.ds.data, batch, jnp.asarray(valid[start:start + b]))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return {f"{split}_loss": float(sums["loss_sum"] / sums["count"]),
            f"{split}_sigma_out": float(sums["sigma_out_sum"] / sums["count"])}


def save_pictures(run: Run, steps: Steps, state: TrainState, workdir: Path, records: list[dict[str, Any]],
                  tb: outputs.TensorBoard) -> None:
    """The pictures regenerated at each save interval: curves, input/output pairs, the cloud in three views."""
    folder = workdir / "pictures"
    step = int(state.step)
    plots.save_curves(folder / "curves.png", records)
    idx = run.ds.splits["test"] if len(run.ds.splits["test"]) else run.ds.splits["train"]
    batch = jnp.asarray(host_batch(run, idx[:8], step))
    targets, images = jax.device_get(steps.sample(state, run.ds.data, batch))
    grid = plots.pairs(targets, images)
    plots.save_png(folder / "pairs.png", grid, scale=plots.enlargement(run.ds.size))
    tb.image("inputs_outputs", grid, step)
    plots.save_cloud_views(folder / "cloud.png", np.asarray(state.params["points"]), title=f"step {step}")


def checkpoint_manager(workdir: Path, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=int(cfg.train.max_to_keep), create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager((workdir / "checkpoints").resolve(), options=options)


def restore_or_init(run: Run, mngr: ocp.CheckpointManager, workdir: Path) -> TrainState:
    """The latest checkpoint if there is one, else a fresh state (and its initial points written)."""
    state = create_state(run, initial_points(run))
    latest = mngr.latest_step()
    if latest is None:
        if jax.process_index() == 0:
            outputs.write_shape(workdir, "initial", np.asarray(state.params["points"]), subfolders=False)
        return state
    try:
        restored = mngr.restore(latest, args=ocp.args.StandardRestore(state))
    except Exception as e:  # orbax raises many types for a damaged or mismatched checkpoint
        raise InputError(workdir / "checkpoints" / str(latest),
                         f"cannot restore checkpoint ({e.__class__.__name__}); it may be damaged or from a "
                         "different config") from None
    return restored


def _log_record(run: Run, step: int, acc: dict[str, jax.Array], n: int, images_per_s: float) -> dict[str, Any]:
    values = jax.device_get(acc)
    lr, plr = learning_rates(run.cfg, run.total_steps)
    scale = float(values["lr_scale"]) / n
    record = {"step": step, "epoch": (step - 1) // run.steps_per_epoch}
    record.update({k: float(v) / n for k, v in values.items() if k != "lr_scale"})
    record.update({"lr": float(lr(step - 1)) * scale, "plr": 0.0 if run.pose_only else float(plr(step - 1)) * scale,
                   "images_per_s": images_per_s})
    return record


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
    """Train (or resume) the run a config describes, then (``train.report``) evaluate it against its ground
    truth and write ``report.html``; everything goes under ``workdir``. With several processes, each
    trains its share of the global batch and only process 0 writes files (Orbax coordinates checkpoints)."""
    workdir = Path(workdir)
    run = setup(cfg, cache_dir=workdir / "cache")
    primary = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    mngr = checkpoint_manager(workdir, cfg)
    state = jax.device_put(restore_or_init(run, mngr, workdir), run.replicated())
    start = int(state.step)
    refined = None
    if cfg.refine.steps > 0:
        from holly_jax import refine  # refinement builds on this module
        if start == run.total_steps:  # the amortised phase is done: resume the refinement, if it began
            refined = refine.load(workdir, run, state)
    logged = start + (0 if refined is None else int(refined.step))
    metrics_log = outputs.MetricsLog(workdir / "metrics.jsonl")
    if primary:
        outputs.write_json(workdir / "config.json", cfg.to_dict())
        metrics_log.truncate_after(logged)
        tb = outputs.TensorBoard(workdir / "tb", purge_step=logged)
    steps = make_steps(run)
    say = tqdm.write if primary else (lambda _: None)
    say(f"{len(run.ds.splits['train'])} training images, batch {run.batch_size} over {run.mesh.size} device(s), "
        f"{run.steps_per_epoch} steps per epoch, {run.total_steps} steps in all"
        + (f", resuming at step {start}" if start else ""))

    bar = tqdm(total=run.total_steps * run.batch_size, initial=start * run.batch_size, unit="img",
               unit_scale=True, dynamic_ncols=True, disable=None if primary else True, desc="train")
    acc, n_acc, t_last, images_last = None, 0, time.perf_counter(), 0
    for step, batch in zip(range(start, run.total_steps), train_batches(run, start)):
        state, metrics = steps.train(state, run.ds.data, batch)
        acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
        n_acc += 1
        images_last += run.batch_size
        bar.update(run.batch_size)
        done = step + 1
        last = done == run.total_steps
        if done % cfg.train.log_every == 0 or last:
            jax.block_until_ready(acc)
            rate = images_last / (time.perf_counter() - t_last)
            record = _log_record(run, done, acc, n_acc, rate)
            if not np.isfinite(record["train_loss"]):
                raise InputError(None, f"training diverged: the loss is {record['train_loss']} at step {done}; "
                                       f"the last checkpoint (step {mngr.latest_step()}) is kept")
            record.update(score_split(run, steps, state))
            if primary:
                metrics_log.append(record)
                tb.write(record)
            bar.set_postfix(loss=f"{record['train_loss']:.4g}", sigma=f"{record['sigma_in']:.3g}",
                            img_s=f"{rate:.0f}")
            test = f"{record['test_loss']:.4g}" if "test_loss" in record else "-"
            say(f"step {done}/{run.total_steps} epoch {record['epoch']}: train loss {record['train_loss']:.4g}, "
                f"test loss {test}, sigma {record['sigma_in']:.3g} -> {record['sigma_out']:.3g}, "
                f"{rate:.0f} images/s")
            acc, n_acc, images_last = None, 0, 0
        if done % cfg.train.save_every == 0 or last:
            mngr.save(done, args=ocp.args.StandardSave(state))
            if primary:
                epoch_done = (done - 1) // run.steps_per_epoch
                outputs.write_shape(workdir, f"shape_e{epoch_done}_s{done}", np.asarray(state.params["points"]))
                save_pictures(run, steps, state, workdir, metrics_log.read(), tb)
        if done % cfg.train.log_every == 0 or last:
            t_last = time.perf_counter()  # the rate excludes evaluation and saving
    bar.close()
    mngr.wait_until_finished()
    if cfg.refine.steps > 0:
        refined = refine.run_phase(run, state, workdir, metrics_log if primary else None, tb if primary else None,
                                   say, primary, refined)
        state = refine.with_points(state, refined)
    if run.ds.images is not None and run.ds.images.skipped:
        say(f"warning: {run.ds.images.skipped} image(s) were skipped (listed above)")
    if not primary:
        return state
    outputs.write_shape(workdir, "final", np.asarray(state.params["points"]), subfolders=False)
    tb.close()
    if cfg.train.report:
        from holly_jax import evaluate as evaluation  # evaluation builds on this module
        evaluation.evaluate_state(run, state, workdir, quiet=True, refined=refined)
        say(f"report: {workdir / 'report.html'}")
    return state
