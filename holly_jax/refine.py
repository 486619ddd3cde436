"""Per-image pose refinement (auto-decoding), the optional phase after the amortised one.

Each refined training image gets a row in a pose table, started from the
network's best hypothesis at the schedule's final sigma. The rows and the
points are then optimised together on the same L1 loss; the network is no
longer used. The rotation of row m is exp(omega_m) R0_m, with R0_m the start
and omega_m (a rotation vector) learned, so the learned part starts at zero and
never meets the axis-angle wrap. A step reads and writes only the rows of its
batch, with Adam moments and bias-correction counts kept per row: images
outside the batch keep their poses and moments exactly. Targets come from the
same place as in training (simulated items, localisation particles at a fixed
in-plane angle each, or FITS images from the final schedule entry), so a row
always meets the same image.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from tqdm import tqdm

from holly_jax import loss, outputs, plots, render, rotations, train
from holly_jax.errors import InputError

SIGMA_FLOOR = 0.05  # pixels: a learned sigma is kept above this


class RefineState(struct.PyTreeNode):
    step: jax.Array  # refinement steps done
    points: jax.Array  # N x 3
    points_opt: Any  # optax state of the points
    items_M: jax.Array  # the dataset item of each row
    R0_Mx3x3: jax.Array  # each row's starting rotation (fixed)
    rows: dict  # learned per row: omega (M x 3), t (M x 2), sigma (M)
    mu: dict  # Adam first moments, per row
    nu: dict  # Adam second moments, per row
    count_M: jax.Array  # Adam updates each row has had


class Phase(NamedTuple):
    """The refinement's static settings."""
    steps: int
    batch_size: int
    rows: int
    steps_per_epoch: int
    sigma: float
    lr: optax.Schedule  # pose rows
    plr: optax.Schedule  # points


def phase(run: train.Run) -> Phase:
    """The refinement's sizes and learning rates (both fall linearly to zero over the last
    ``optim.decay_fraction`` of the refinement, as in the amortised phase)."""
    cfg = run.cfg
    num_train = len(run.ds.splits["train"])
    m = min(int(cfg.refine.images) or num_train, num_train)
    b = int(cfg.refine.batch_size) or run.batch_size
    b = min(b, m) - min(b, m) % run.mesh.size
    if b <= 0:
        raise InputError(None, f"config.refine: {m} image(s) cannot fill a batch over {run.mesh.size} devices")
    steps = int(cfg.refine.steps)
    plr = cfg.refine.plr or cfg.optim.plr or cfg.optim.lr
    fraction = cfg.optim.decay_fraction
    sigma = float(train.sigma_now(run, run.ds.data.sigmas_S, run.total_steps))
    return Phase(steps, b, m, m // b, sigma, train.decaying(cfg.refine.lr, steps, fraction),
                 train.decaying(plr, steps, fraction))


def points_optimizer(run: train.Run, ph: Phase) -> optax.GradientTransformation:
    o = run.cfg.optim
    if run.pose_only:
        return optax.set_to_zero()
    return optax.adamw(ph.plr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)


def row_rotations(R0_Bx3x3: jax.Array, omega_Bx3: jax.Array) -> jax.Array:
    return jnp.einsum("bij,bjk->bik", jax.vmap(rotations.axis_angle_to_matrix)(omega_Bx3), R0_Bx3x3)


def rotations_of(state: RefineState) -> jax.Array:
    """Every row's current rotation, M x 3 x 3."""
    return row_rotations(state.R0_Mx3x3, state.rows["omega"])


def sparse_adam(rows: dict, grads: dict, mu: dict, nu: dict, count_B: jax.Array, lr: jax.Array,
                cfg: ml_collections.ConfigDict) -> tuple[dict, dict, dict, jax.Array]:
    """One Adam update of gathered rows, bias-corrected by each row's own count."""
    b1, b2, eps = cfg.optim.b1, cfg.optim.b2, cfg.optim.eps
    count = count_B + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), nu, grads)

    def step(p, m, v):
        c = count.astype(p.dtype).reshape((-1,) + (1,) * (p.ndim - 1))
        return p - lr * (m / (1 - b1 ** c)) / (jnp.sqrt(v / (1 - b2 ** c)) + eps)
    return jax.tree.map(step, rows, mu, nu), mu, nu, count


def make_step(run: train.Run, ph: Phase) -> Callable:
    """The jitted refinement step: (state, data, rows_B, batch) -> (state, metrics), where batch is what the
    training step takes for the rows' items (indices, or FITS images)."""
    cfg, mode = run.cfg, run.cfg.train.normalise
    tx = points_optimizer(run, ph)
    learn_sigma = bool(cfg.model.predict_sigma)

    def refine_step(state: RefineState, sim, rows_B: jax.Array, batch: jax.Array):
        rows_B = jax.lax.with_sharding_constraint(rows_B, run.batch_sharded())
        batch = jax.lax.with_sharding_constraint(batch, run.batch_sharded())
        sigma = jnp.float32(ph.sigma)
        targets = train.targets_for(run, sim, batch, sigma, jnp.int32(run.total_steps))
        R0 = state.R0_Mx3x3[rows_B]
        gathered = jax.tree.map(lambda x: x[rows_B], state.rows)

        def loss_fn(points, rows):
            images = render.render_poses(points, row_rotations(R0, rows["omega"]), rows["t"], rows["sigma"],
                                         run.ds.size)
            return jnp.sum(loss.l1_per_image(images, targets, mode))

        total, (g_points, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.points, gathered)
        if not learn_sigma:
            g_rows = {**g_rows, "sigma": jnp.zeros_like(g_rows["sigma"])}
        updates, points_opt = tx.update(g_points, state.points_opt, state.points)
        points = optax.apply_updates(state.points, updates)
        new, mu, nu, count = sparse_adam(gathered, g_rows, jax.tree.map(lambda x: x[rows_B], state.mu),
                                         jax.tree.map(lambda x: x[rows_B], state.nu), state.count_M[rows_B],
                                         ph.lr(state.step), cfg)
        new = {**new, "sigma": jnp.maximum(new["sigma"], SIGMA_FLOOR)}
        scatter = lambda full, part: full.at[rows_B].set(part)
        state = state.replace(step=state.step + 1, points=points, points_opt=points_opt,
                              rows=jax.tree.map(scatter, state.rows, new), mu=jax.tree.map(scatter, state.mu, mu),
                              nu=jax.tree.map(scatter, state.nu, nu), count_M=state.count_M.at[rows_B].set(count))
        metrics = {"train_loss": total / rows_B.shape[0], "sigma_out": jnp.mean(new["sigma"]),
                   "grad_norm": optax.global_norm((g_points, g_rows))}
        return state, metrics

    rep = run.replicated()
    return jax.jit(refine_step, donate_argnums=0, out_shardings=(rep, rep))


def initial_state(run: train.Run, state: train.TrainState, ph: Phase) -> RefineState:
    """Rows for the first ``ph.rows`` training items, started from the network's winning hypothesis."""
    items = np.asarray(run.ds.splits["train"][:ph.rows], np.int32)
    b = run.batch_size
    sigma = jnp.float32(ph.sigma)

    @jax.jit
    def poses(state, sim, batch):
        targets = train.targets_for(run, sim, batch, sigma, jnp.int32(run.total_steps))
        out = train.predict(run, state.params, state.batch_stats, targets, sigma)
        return out.pose.R_Bx3x3, out.pose.t_Bx2, out.sigma_B

    padded = np.concatenate([items, np.full((-len(items)) % b, items[0], np.int32)])
    parts = [jax.device_get(poses(state, run.ds.data, jax.device_put(
        train.host_batch(run, padded[i:i + b], run.total_steps), run.batch_sharded())))
        for i in range(0, len(padded), b)]
    R, t, s = (np.concatenate(x)[:len(items)] for x in zip(*parts))
    return _fresh_state(run, ph, jnp.array(state.params["points"]),  # a copy: the train state may be donated
                        jnp.asarray(items), jnp.asarray(R, jnp.float32), jnp.asarray(t, jnp.float32),
                        jnp.asarray(s, jnp.float32))


def _fresh_state(run: train.Run, ph: Phase, points: jax.Array, items_M: jax.Array, R0_Mx3x3: jax.Array,
                 t_Mx2: jax.Array, sigma_M: jax.Array) -> RefineState:
    """A state before its first step: rows at their starting poses, moments and counts zero."""
    rows = {"omega": jnp.zeros((len(items_M), 3), t_Mx2.dtype), "t": t_Mx2, "sigma": sigma_M}
    return RefineState(step=jnp.int32(0), points=points, points_opt=points_optimizer(run, ph).init(points),
                       items_M=items_M, R0_Mx3x3=R0_Mx3x3, rows=rows, mu=jax.tree.map(jnp.zeros_like, rows),
                       nu=jax.tree.map(jnp.zeros_like, rows), count_M=jnp.zeros_like(items_M))


def epoch_rows(run: train.Run, ph: Phase, epoch: int) -> np.ndarray:
    """The table rows of one refinement epoch in their shuffled order: a function of (seed, epoch) only."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(run.cfg.seed), 3), epoch)
    return np.asarray(jax.random.permutation(key, ph.rows), np.int32)


def batches(run: train.Run, ph: Phase, items_M: np.ndarray, start: int):
    """(rows, batch) for refinement steps start, start + 1, ..., gathered on a background thread."""
    def produce():
        order, order_epoch = None, -1
        for step in range(start, ph.steps):
            epoch = step // ph.steps_per_epoch
            if epoch != order_epoch:
                order, order_epoch = epoch_rows(run, ph, epoch), epoch
            rows = order[(step % ph.steps_per_epoch) * ph.batch_size:][:ph.batch_size]
            batch = train.host_batch(run, items_M[rows], run.total_steps)
            yield jax.device_put(rows, run.batch_sharded()), jax.device_put(batch, run.batch_sharded())
    return train.prefetched(produce(), 2)


def restore(mngr: ocp.CheckpointManager, template: RefineState) -> RefineState | None:
    """The manager's latest refinement state (None without one), shaped like ``template``."""
    latest = mngr.latest_step()
    if latest is None:
        return None
    try:
        return mngr.restore(latest, args=ocp.args.StandardRestore(template))
    except Exception as e:  # orbax raises many types for a damaged or mismatched checkpoint
        raise InputError(mngr.directory / str(latest),
                         f"cannot restore refinement checkpoint ({e.__class__.__name__}); it may be damaged or "
                         "from a different config") from None


def load(workdir: str | Path, run: train.Run, state: train.TrainState) -> RefineState | None:
    """A run's latest refinement state, or None when it has none."""
    if int(run.cfg.refine.steps) <= 0 or not (Path(workdir) / "refine" / "checkpoints").exists():
        return None
    ph = phase(run)
    mngr = train.checkpoint_manager(Path(workdir) / "refine", run.cfg)
    if mngr.latest_step() is None:
        return None
    return restore(mngr, jax.eval_shape(lambda: initial_state_shape(run, state, ph)))


def initial_state_shape(run: train.Run, state: train.TrainState, ph: Phase) -> RefineState:
    """A state of the right shapes without running the network (a restore template)."""
    m = ph.rows
    return _fresh_state(run, ph, jnp.asarray(state.params["points"]), jnp.zeros((m,), jnp.int32),
                        jnp.zeros((m, 3, 3)), jnp.zeros((m, 2)), jnp.zeros((m,)))


def run_phase(run: train.Run, state: train.TrainState, workdir: Path, log: Any, tb: Any, say: Callable,
              primary: bool, restored: RefineState | None = None) -> RefineState:
    """Refine (or resume refining) after the amortised phase; checkpoints under ``workdir/refine``, and
    records in the run's metrics log at steps after the amortised ones."""
    ph = phase(run)
    mngr = train.checkpoint_manager(workdir / "refine", run.cfg)
    rstate = restored if restored is not None else initial_state(run, state, ph)
    rstate = jax.device_put(rstate, run.replicated())
    start = int(rstate.step)
    step_fn = make_step(run, ph)
    items = np.asarray(rstate.items_M)
    say(f"refining the poses of {ph.rows} images with the points: batch {ph.batch_size}, {ph.steps} steps"
        + (f", resuming at step {start}" if start else ""))
    bar = tqdm(total=ph.steps * ph.batch_size, initial=start * ph.batch_size, unit="img", unit_scale=True,
               dynamic_ncols=True, disable=None if primary else True, desc="refine")
    every = int(run.cfg.train.log_every)
    acc, n_acc, t_last, images = None, 0, time.perf_counter(), 0
    for step, (rows, batch) in zip(range(start, ph.steps), batches(run, ph, items, start)):
        rstate, metrics = step_fn(rstate, run.ds.data, rows, batch)
        acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
        n_acc, images = n_acc + 1, images + ph.batch_size
        bar.update(ph.batch_size)
        done = step + 1
        last = done == ph.steps
        if done % every == 0 or last:
            values = jax.device_get(acc)
            rate = images / (time.perf_counter() - t_last)
            record = {"step": run.total_steps + done, "phase": "refine", "refine_step": done,
                      **{k: float(v) / n_acc for k, v in values.items()},
                      "lr": float(ph.lr(done - 1)), "plr": float(ph.plr(done - 1)), "images_per_s": rate}
            if not np.isfinite(record["train_loss"]):
                raise InputError(None, f"refinement diverged: the loss is {record['train_loss']} at refinement "
                                       f"step {done}; the last checkpoint (step {mngr.latest_step()}) is kept")
            if primary:
                log.append(record)
                tb.write(record)
            bar.set_postfix(loss=f"{record['train_loss']:.4g}", img_s=f"{rate:.0f}")
            say(f"refine step {done}/{ph.steps}: loss {record['train_loss']:.4g}, {rate:.0f} images/s")
            acc, n_acc, images = None, 0, 0
        if done % int(run.cfg.train.save_every) == 0 or last:
            mngr.save(done, args=ocp.args.StandardSave(rstate))
            if primary:
                points = np.asarray(rstate.points)
                outputs.write_shape(workdir, f"shape_refine_s{done}", points)
                plots.save_curves(workdir / "pictures" / "curves.png", log.read())
                plots.save_cloud_views(workdir / "pictures" / "cloud.png", points, title=f"refinement step {done}")
        if done % every == 0 or last:
            t_last = time.perf_counter()
    bar.close()
    mngr.wait_until_finished()
    return rstate


def with_points(state: train.TrainState, rstate: RefineState | None) -> train.TrainState:
    """The train state carrying the refined points (unchanged without refinement)."""
    if rstate is None:
        return state
    return state.replace(params={**state.params, "points": rstate.points})
