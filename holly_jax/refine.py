"""Per-image pose refinement (auto-decoding), the optional phase after training (docs/method.md §6).

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

import functools
import shutil
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from holly_jax import (
    checkpoints,
    data,
    forward,
    input_pipeline,
    loop,
    loss,
    optim,
    outputs,
    plots,
    render,
    rotations,
    salts,
    search,
)
from holly_jax.errors import InputError
from holly_jax.setup import Setup
from holly_jax.train import TrainState

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


def phase(setup: Setup) -> Phase:
    """The refinement's sizes and learning rates (both fall linearly to zero over the last
    ``optim.decay_fraction`` of the refinement, as in training)."""
    cfg = setup.cfg
    num_train = len(setup.ds.splits["train"])
    m = min(int(cfg.refine.images) or num_train, num_train)
    b = int(cfg.refine.batch_size) or setup.batch_size
    b = min(b, m) - min(b, m) % setup.mesh.size
    if b <= 0:
        raise InputError(None, f"config.refine: {m} image(s) cannot fill a batch over {setup.mesh.size} devices")
    steps = int(cfg.refine.steps)
    plr = cfg.refine.plr or cfg.optim.plr or cfg.optim.lr
    fraction = cfg.optim.decay_fraction
    return Phase(
        steps,
        b,
        m,
        m // b,
        forward.final_sigma(setup),
        optim.decaying(cfg.refine.lr, steps, fraction),
        optim.decaying(plr, steps, fraction),
    )


def points_optimizer(setup: Setup, ph: Phase) -> optax.GradientTransformation:
    return optax.set_to_zero() if setup.pose_only else optim.adamw(setup.cfg, ph.plr)


def row_rotations(R0_Bx3x3: jax.Array, omega_Bx3: jax.Array) -> jax.Array:
    return jnp.einsum("bij,bjk->bik", jax.vmap(rotations.axis_angle_to_matrix)(omega_Bx3), R0_Bx3x3)


def rotations_of(state: RefineState) -> jax.Array:
    """Every row's current rotation, M x 3 x 3."""
    return row_rotations(state.R0_Mx3x3, state.rows["omega"])


def sparse_adam(
    rows: dict, grads: dict, mu: dict, nu: dict, count_B: jax.Array, lr: jax.Array, cfg: ml_collections.ConfigDict
) -> tuple[dict, dict, dict, jax.Array]:
    """One Adam update of gathered rows, bias-corrected by each row's own count."""
    b1, b2, eps = cfg.optim.b1, cfg.optim.b2, cfg.optim.eps
    count = count_B + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), nu, grads)

    def step(p, m, v):
        c = count.astype(p.dtype).reshape((-1,) + (1,) * (p.ndim - 1))
        return p - lr * (m / (1 - b1**c)) / (jnp.sqrt(v / (1 - b2**c)) + eps)

    return jax.tree.map(step, rows, mu, nu), mu, nu, count


def make_step(setup: Setup, ph: Phase) -> Callable:
    """The jitted refinement step: (state, arrays, rows_B, batch) -> (state, metrics), where batch is what the
    training step takes for the rows' items (indices, or FITS images)."""
    cfg, mode = setup.cfg, setup.cfg.train.normalise
    tx = points_optimizer(setup, ph)
    learn_sigma = bool(cfg.model.predict_sigma)

    def refine_step(state: RefineState, arrays: data.DataArrays, rows_B: jax.Array, batch: jax.Array):
        rows_B = jax.lax.with_sharding_constraint(rows_B, setup.batch_sharded())
        batch = jax.lax.with_sharding_constraint(batch, setup.batch_sharded())
        sigma = jnp.float32(ph.sigma)
        targets = data.targets(setup.ds, arrays, batch, sigma, jnp.int32(setup.total_steps))
        R0 = state.R0_Mx3x3[rows_B]
        gathered = jax.tree.map(lambda x: x[rows_B], state.rows)

        def loss_fn(points, rows):
            images = render.render_poses(
                forward.cloud(setup, points), row_rotations(R0, rows["omega"]), rows["t"], rows["sigma"], setup.ds.size
            )
            return jnp.sum(loss.l1_per_image(images, targets, mode))

        total, (g_points, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.points, gathered)
        if not learn_sigma:
            g_rows = {**g_rows, "sigma": jnp.zeros_like(g_rows["sigma"])}
        updates, points_opt = tx.update(g_points, state.points_opt, state.points)
        points = optax.apply_updates(state.points, updates)
        new, mu, nu, count = sparse_adam(
            gathered,
            g_rows,
            jax.tree.map(lambda x: x[rows_B], state.mu),
            jax.tree.map(lambda x: x[rows_B], state.nu),
            state.count_M[rows_B],
            ph.lr(state.step),
            cfg,
        )
        new = {**new, "sigma": jnp.maximum(new["sigma"], SIGMA_FLOOR)}
        scatter = lambda full, part: full.at[rows_B].set(part)
        state = state.replace(
            step=state.step + 1,
            points=points,
            points_opt=points_opt,
            rows=jax.tree.map(scatter, state.rows, new),
            mu=jax.tree.map(scatter, state.mu, mu),
            nu=jax.tree.map(scatter, state.nu, nu),
            count_M=state.count_M.at[rows_B].set(count),
        )
        metrics = {
            "train_loss": total / rows_B.shape[0],
            "sigma_out": jnp.mean(new["sigma"]),
            "grad_norm": optax.global_norm((g_points, g_rows)),
        }
        return state, metrics

    rep = setup.replicated()
    return jax.jit(refine_step, donate_argnums=0, out_shardings=(rep, rep))


def initial_state(setup: Setup, state: TrainState, ph: Phase) -> RefineState:
    """Rows for the first ``ph.rows`` training items, started from the network's winning hypothesis (or,
    with ``search.use="refine"``, the global search's pose where its loss is lower)."""
    items = np.asarray(setup.ds.splits["train"][: ph.rows], np.int32)
    b = setup.batch_size
    sigma = jnp.float32(ph.sigma)

    searched = setup.cfg.search.use == "refine"

    @functools.partial(jax.jit, out_shardings=setup.replicated())
    def poses(state, arrays, batch):
        targets = data.targets(setup.ds, arrays, batch, sigma, jnp.int32(setup.total_steps))
        out = forward.predict(setup, state.params, state.batch_stats, targets, sigma)
        R, t = out.pose.R_Bx3x3, out.pose.t_Bx2
        if searched:  # the search's pose where it fits the image better than the network's
            found = search.search(  # scored at the sigma the row keeps, as the network's pose is
                forward.cloud(setup, state.params["points"]),
                targets,
                out.sigma_B,
                setup.ds.size,
                setup.cfg.train.normalise,
                search.settings(setup.cfg),
            )
            better = found.loss_B < out.loss_B
            R = jnp.where(better[:, None, None], found.R_Bx3x3, R)
            t = jnp.where(better[:, None], found.t_Bx2, t)
        return R, t, out.sigma_B

    padded = np.concatenate([items, np.full((-len(items)) % b, items[0], np.int32)])
    parts = [
        jax.device_get(
            poses(
                state,
                setup.ds.arrays,
                setup.split(input_pipeline.host_batch(setup, padded[i : i + b], setup.total_steps)),
            )
        )
        for i in range(0, len(padded), b)
    ]
    R, t, s = (np.concatenate(x)[: len(items)] for x in zip(*parts))
    return _fresh_state(
        setup,
        ph,
        jnp.asarray(np.asarray(state.params["points"])),  # a copy: the train state may be donated
        jnp.asarray(items),
        jnp.asarray(R, jnp.float32),
        jnp.asarray(t, jnp.float32),
        jnp.asarray(s, jnp.float32),
    )


def _fresh_state(
    setup: Setup,
    ph: Phase,
    points: jax.Array,
    items_M: jax.Array,
    R0_Mx3x3: jax.Array,
    t_Mx2: jax.Array,
    sigma_M: jax.Array,
) -> RefineState:
    """A state before its first step: rows at their starting poses, moments and counts zero."""
    rows = {"omega": jnp.zeros((len(items_M), 3), t_Mx2.dtype), "t": t_Mx2, "sigma": sigma_M}
    return RefineState(
        step=jnp.int32(0),
        points=points,
        points_opt=points_optimizer(setup, ph).init(points),
        items_M=items_M,
        R0_Mx3x3=R0_Mx3x3,
        rows=rows,
        mu=jax.tree.map(jnp.zeros_like, rows),
        nu=jax.tree.map(jnp.zeros_like, rows),
        count_M=jnp.zeros_like(items_M),
    )


def initial_state_shape(setup: Setup, state: TrainState, ph: Phase) -> RefineState:
    """A state of the right shapes without running the network (a restore template)."""
    m = ph.rows
    return _fresh_state(
        setup,
        ph,
        jnp.asarray(state.params["points"]),
        jnp.zeros((m,), jnp.int32),
        jnp.zeros((m, 3, 3)),
        jnp.zeros((m, 2)),
        jnp.zeros((m,)),
    )


def batches(setup: Setup, ph: Phase, items_M: np.ndarray, start: int):
    """(rows, batch) for refinement steps start, start + 1, ..., gathered on a background thread."""

    def make(rows, step):
        batch = input_pipeline.host_batch(setup, items_M[rows], setup.total_steps)
        return setup.split(rows), setup.split(batch)

    def order(epoch):
        return input_pipeline.shuffled(setup.cfg.seed, salts.REFINE_ORDER, ph.rows, epoch).astype(np.int32)

    return input_pipeline.batches(order, ph.steps_per_epoch, ph.batch_size, start, ph.steps, make)


def enabled(setup: Setup) -> bool:
    return int(setup.cfg.refine.steps) > 0


def discard(workdir: str | Path) -> bool:
    """Remove a refinement made from an earlier training state (training goes on, so it is redone); True if
    there was one."""
    folder = Path(workdir) / "refine" / "checkpoints"
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def load(workdir: str | Path, setup: Setup, state: TrainState, move_damaged: bool = True) -> RefineState | None:
    """A run's latest refinement state, or None when it has none."""
    if not enabled(setup) or not (Path(workdir) / "refine" / "checkpoints").exists():
        return None
    ph = phase(setup)
    mngr = checkpoints.manager(Path(workdir) / "refine", setup.cfg)
    template = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=setup.replicated()),
        jax.eval_shape(lambda: initial_state_shape(setup, state, ph)),
    )
    return checkpoints.restore_latest(mngr, template, "refinement checkpoint", move_damaged)


def refine(
    setup: Setup, state: TrainState, workdir: Path, rec: outputs.Recorder, restored: RefineState | None = None
) -> RefineState:
    """Refine (or resume refining) after training; checkpoints under ``workdir/refine``, and records in the
    run's metrics log at steps after the training ones."""
    ph = phase(setup)
    mngr = checkpoints.manager(workdir / "refine", setup.cfg)
    rstate = restored if restored is not None else initial_state(setup, state, ph)
    rstate = setup.replicate(rstate)
    start = int(rstate.step)
    step_fn = make_step(setup, ph)
    rec.say(
        f"refining the poses of {ph.rows} images with the points: batch {ph.batch_size}, {ph.steps} steps"
        + (f", resuming at step {start}" if start else "")
    )

    def report(done: int, means: dict[str, float], rate: float, rstate: RefineState) -> dict[str, Any]:
        record = {
            "step": setup.total_steps + done,
            "phase": "refine",
            "refine_step": done,
            **means,
            "lr": float(ph.lr(done - 1)),
            "plr": float(ph.plr(done - 1)),
            "images_per_s": rate,
        }
        rec.write(record)
        rec.say(f"refine step {done}/{ph.steps}: loss {record['train_loss']:.4g}, {rate:.0f} images/s")
        return record

    def save(done: int, rstate: RefineState) -> None:
        checkpoints.save(mngr, done, rstate)
        if rec.primary:
            points = forward.full_cloud(setup, rstate.points)
            outputs.write_shape(workdir, f"shape_refine_s{done}", points)
            plots.save_curves(workdir / "pictures" / "curves.png", rec.records())
            plots.save_cloud_views(workdir / "pictures" / "cloud.png", points, title=f"refinement step {done}")

    cfg = setup.cfg
    spec = loop.Loop("refinement", ph.steps, ph.batch_size, int(cfg.train.log_every), int(cfg.train.save_every))
    rstate = loop.drive(
        spec,
        rstate,
        start,
        lambda s, rows_batch: step_fn(s, setup.ds.arrays, *rows_batch),
        batches(setup, ph, np.asarray(rstate.items_M), start),
        report,
        save,
        rec.primary,
    )
    mngr.wait_until_finished()
    return rstate


def with_points(state: TrainState, rstate: RefineState | None) -> TrainState:
    """The train state carrying the refined points (unchanged without refinement)."""
    if rstate is None:
        return state
    return state.replace(params={**state.params, "points": rstate.points})
