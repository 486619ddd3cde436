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
import math
import shutil
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from scipy.spatial import cKDTree

from holly_jax import (
    checkpoints,
    compiler,
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
    symmetry,
)
from holly_jax.errors import InputError
from holly_jax.setup import Setup
from holly_jax.train import TrainState

SIGMA_FLOOR = 0.05  # pixels: a learned sigma is kept above this
# Breaking a learned cloud's false symmetry (refine.relabel_every > 0, docs/method.md §6)
BREAK_AT = 1 / 3  # of the refinement steps: where it happens
POOR_FIT = 2.0  # a row fits poorly over this many times the 10th percentile of the rows' losses
FEATURE_SHARE = 0.05  # of the learned points, moved to the strongest unexplained place
VOXELS = 40  # the back-projection's grid, per side
PEAK_SCORE = 8.0  # a place gets points when its unexplained intensity is this many robust deviations up
MAX_TURNS = 32  # relabelling candidates kept from the learned cloud's symmetries
STRAY = 0.45  # a learned point whose images read under this share of the median point's intensity is off
# the structure (``relocate_strays``)
SPACING_SAMPLE = 256  # the relocated points' spread comes from this many of the others' neighbour distances


class RefineState(struct.PyTreeNode):
    step: jax.Array  # refinement steps done
    points: jax.Array  # N x 3
    points_opt: Any  # optax state of the points
    items_M: jax.Array  # the dataset item of each row
    R0_Mx3x3: jax.Array  # each row's starting rotation (fixed, but for relabelling)
    rows: dict  # learned per row: omega (M x 3), t (M x 2), sigma (M)
    mu: dict  # Adam first moments, per row
    nu: dict  # Adam second moments, per row
    count_M: jax.Array  # Adam updates each row has had
    turns_Kx3x3: jax.Array  # the learned cloud's (near-)symmetries a row may be relabelled by (MAX_TURNS, or
    # without relabelling the identity alone: Orbax saves no empty array)


class Phase(NamedTuple):
    """The refinement's static settings."""

    steps: int
    batch_size: int
    rows: int
    steps_per_epoch: int
    sigma: float
    relabel_every: int  # steps between relabellings (0: never)
    relabel_after: int  # relabellings come after this step (the symmetry-breaking one, if any)
    search_again: int  # every row is searched again at this step (``search.again_at``; 0: never)
    relocate_every: int  # stray points relocated every this many steps, after the breaking (0: never)
    trim: float  # the share of each batch's highest-loss rows left out of the points' update
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
        int(cfg.refine.relabel_every),
        _breaking_step(setup, steps) if int(cfg.refine.relabel_every) else 0,
        max(1, int(steps * cfg.search.again_at)) if cfg.search.again_at > 0 else 0,
        0 if setup.pose_only else int(cfg.refine.relocate_every),
        float(cfg.refine.trim),
        optim.decaying(cfg.refine.lr, steps, fraction),
        optim.decaying(plr, steps, fraction),
    )


def points_optimizer(setup: Setup, ph: Phase) -> optax.GradientTransformation:
    return optax.set_to_zero() if setup.pose_only else optim.adamw(setup.cfg, ph.plr)


def row_rotations(R0_Bx3x3: jax.Array, omega_Bx3: jax.Array) -> jax.Array:
    return jnp.einsum(
        "bij,bjk->bik",
        jax.vmap(rotations.axis_angle_to_matrix)(omega_Bx3),
        R0_Bx3x3,
        precision=jax.lax.Precision.HIGHEST,
    )


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


def relabelling_turns(points_Nx3: np.ndarray) -> np.ndarray:
    """The rotations that map the learned cloud (nearly) onto itself (``symmetry.turns``), at most
    MAX_TURNS, padded with the identity, MAX_TURNS x 3 x 3. A pose turned by one draws (nearly) the same
    image; where the cloud is an average over wrongly posed copies, these are the copies. The identity is a
    candidate too: the pose itself with its translation re-centred (``relabel``)."""
    turns = list(symmetry.turns(np.asarray(points_Nx3, np.float64)))[:MAX_TURNS]
    return np.asarray(turns + [np.eye(3)] * (MAX_TURNS - len(turns)), np.float32)


def relabel(cloud_Nx3, turns_Kx3x3, R_Bx3x3, t_Bx2, sigma_B, targets_BxHxW, size, mode):
    """Each row's pose and its K turned copies R g scored on its image (a copy's translation puts the drawn
    cloud's centroid on the image's, as the search does; the pose itself keeps its own, so a copy by the
    identity is the pose re-centred): the index of the best (0: the pose itself, also on a tie), its
    rotation and its translation."""
    R_all = jnp.concatenate(
        [R_Bx3x3[:, None], jnp.einsum("bij,kjl->bkil", R_Bx3x3, turns_Kx3x3, precision=jax.lax.Precision.HIGHEST)], 1
    )

    def one(R_Cx3x3, t_2, sigma, target):
        t_Cx2 = jnp.concatenate([t_2[None], search.centred(cloud_Nx3, R_Cx3x3[1:], target, size)])
        images = render.render_poses(cloud_Nx3, R_Cx3x3, t_Cx2, jnp.full((len(R_Cx3x3),), sigma), size)
        return loss.l1_per_image(images, target[None], mode), t_Cx2

    losses_BxC, t_all = jax.vmap(one)(R_all, t_Bx2, sigma_B, targets_BxHxW)
    best_B = jnp.argmin(losses_BxC, 1)  # the first of equals: a tie keeps the pose
    pick = lambda x: jnp.take_along_axis(x, best_B.reshape((-1, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]
    return best_B, pick(R_all), pick(t_all)


def _relabelled(setup: Setup, state: RefineState, R0_Bx3x3, gathered: dict, moments: tuple, targets_BxHxW):
    """Gathered rows relabelled (``relabel``): a row that moves starts afresh from its new pose (omega, Adam
    moments and count zero). Returns (moved_B, R0, rows, (mu, nu, count))."""
    best, R, t = relabel(
        forward.cloud(setup, state.points),
        state.turns_Kx3x3,
        row_rotations(R0_Bx3x3, gathered["omega"]),
        gathered["t"],
        gathered["sigma"],
        targets_BxHxW,
        setup.ds.size,
        setup.cfg.train.normalise,
    )
    return _restarted(best > 0, R, t, R0_Bx3x3, gathered, moments)


def _restarted(moved_B, R_Bx3x3, t_Bx2, R0_Bx3x3, gathered: dict, moments: tuple):
    """Rows that moved start afresh at (R, t): R0 = R, omega, Adam moments and count zero; the others as
    they were. Returns (moved_B, R0, rows, (mu, nu, count))."""
    afresh = lambda x: jnp.where(_bcast(moved_B, x), jnp.zeros_like(x), x)
    R0 = jnp.where(moved_B[:, None, None], R_Bx3x3, R0_Bx3x3)
    t = jnp.where(moved_B[:, None], t_Bx2, gathered["t"])
    return moved_B, R0, {**gathered, "omega": afresh(gathered["omega"]), "t": t}, jax.tree.map(afresh, moments)


def trimmed(loss_B: jax.Array, trim: float) -> jax.Array:
    """Weights 1 for the ``ceil((1 - trim) B)`` lowest losses of a batch, 0 for the rest (ties at the
    threshold kept)."""
    kept = max(1, math.ceil((1 - trim) * loss_B.shape[0]))
    threshold = jnp.sort(loss_B)[kept - 1]
    return (loss_B <= threshold).astype(loss_B.dtype)


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
        moments = tuple(jax.tree.map(lambda x: x[rows_B], m) for m in (state.mu, state.nu, state.count_M))
        moved_B = jnp.zeros(rows_B.shape, bool)
        if ph.relabel_every:  # a row moves to its best turned copy, afresh
            due = (state.step % ph.relabel_every == 0) & (state.step > ph.relabel_after)
            moved_B, R0, gathered, moments = jax.lax.cond(
                due,
                lambda: _relabelled(setup, state, R0, gathered, moments, targets),
                lambda: (moved_B, R0, gathered, moments),
            )
        mu_B, nu_B, count_B = moments
        points, points_opt = state.points, state.points_opt
        moved_U = jnp.zeros(points.shape[:1], bool)
        if ph.relocate_every:  # stray points moved onto the structure, their Adam moments zeroed
            due = (state.step % ph.relocate_every == 0) & (state.step > ph.relabel_after)  # poses settled

            def relocated():
                read = point_reads(
                    setup, points, row_rotations(R0, gathered["omega"]), gathered["t"], gathered["sigma"], targets
                )
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), salts.RELOCATE), state.step)
                new, moved = relocate_strays(points, read[:, 0], read[:, 1], key)
                zeroed = lambda x: jnp.where(moved[:, None], 0, x) if x.shape == points.shape else x  # noqa: E731
                return new, jax.tree.map(zeroed, points_opt), moved

            points, points_opt, moved_U = jax.lax.cond(due, relocated, lambda: (points, points_opt, moved_U))

        copies = 0 if ph.trim else None  # trimmed: each row draws its own copy of the points (its own gradient)

        def loss_fn(points, rows):
            clouds = jax.vmap(lambda p: forward.cloud(setup, p))(points) if ph.trim else forward.cloud(setup, points)
            images = jax.vmap(render.render, in_axes=(copies, 0, 0, 0, None, None))(
                clouds, row_rotations(R0, rows["omega"]), rows["t"], rows["sigma"], None, setup.ds.size
            )
            per_row = loss.l1_per_image(images, targets, mode)
            return jnp.sum(per_row), per_row

        drawn_points = jnp.broadcast_to(points, rows_B.shape + points.shape) if ph.trim else points
        (total, per_row), (g_points, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            drawn_points, gathered
        )
        if ph.trim:  # the points learn from the batch's lowest-loss rows alone; every row's pose still moves
            g_points = jnp.einsum(
                "b,b...->...", trimmed(per_row, ph.trim), g_points, precision=jax.lax.Precision.HIGHEST
            )
        if not learn_sigma:
            g_rows = {**g_rows, "sigma": jnp.zeros_like(g_rows["sigma"])}
        updates, points_opt = tx.update(g_points, points_opt, points)
        points = optax.apply_updates(points, updates)
        new, mu, nu, count = sparse_adam(gathered, g_rows, mu_B, nu_B, count_B, ph.lr(state.step), cfg)
        new = {**new, "sigma": jnp.maximum(new["sigma"], SIGMA_FLOOR)}
        scatter = lambda full, part: full.at[rows_B].set(part)
        state = state.replace(
            step=state.step + 1,
            points=points,
            points_opt=points_opt,
            R0_Mx3x3=state.R0_Mx3x3.at[rows_B].set(R0),
            rows=jax.tree.map(scatter, state.rows, new),
            mu=jax.tree.map(scatter, state.mu, mu),
            nu=jax.tree.map(scatter, state.nu, nu),
            count_M=state.count_M.at[rows_B].set(count),
        )
        metrics = {
            "train_loss": total / rows_B.shape[0],
            "sigma_out": jnp.mean(new["sigma"]),
            "grad_norm": optax.tree.norm((g_points, g_rows)),
            "relabelled": jnp.mean(moved_B.astype(jnp.float32)),
            "relocated": jnp.sum(moved_U.astype(jnp.float32)),
        }
        return state, metrics

    rep = setup.replicated()
    return compiler.jit(refine_step, donate_argnums=0, out_shardings=(rep, rep))


def _breaking_step(setup: Setup, steps: int) -> int:
    """The refinement step at which the learned cloud's symmetry is broken (``break_symmetry``); 0 for none:
    an imposed group is symmetric by design, and fixed points cannot move."""
    return 0 if setup.group is not None or setup.pose_only else max(1, int(steps * BREAK_AT))


def _row_chunks(setup: Setup, ph: Phase, items_M: np.ndarray):
    """Every row once, a batch at a time (the last padded with row 0): (rows, batch, valid) placed."""
    b = ph.batch_size
    for i in range(0, ph.rows, b):
        rows = np.arange(i, i + b) % ph.rows
        batch = input_pipeline.host_batch(setup, items_M[rows], setup.total_steps)
        yield setup.split(rows.astype(np.int32)), setup.split(batch), setup.split(np.arange(i, i + b) < ph.rows)


def _rows_drawn(setup: Setup, ph: Phase, state: RefineState, arrays, rows_B, batch):
    """Traced: a chunk of rows' target images and the cloud drawn at their poses, with the poses' R and t."""
    targets = data.targets(setup.ds, arrays, batch, jnp.float32(ph.sigma), jnp.int32(setup.total_steps))
    R = row_rotations(state.R0_Mx3x3[rows_B], state.rows["omega"][rows_B])
    t, sigma = state.rows["t"][rows_B], state.rows["sigma"][rows_B]
    return targets, render.render_poses(forward.cloud(setup, state.points), R, t, sigma, setup.ds.size), R, t


def row_losses(setup: Setup, ph: Phase, state: RefineState) -> np.ndarray:
    """Each row's loss against its image at its pose and the current cloud, as the refinement scores it
    (M,): rows on a wrong pose fit their images about twice as badly as right ones (``poor_fit_share``)."""

    @compiler.jit
    def chunk(state, arrays, rows_B, batch):
        targets, drawn, _, _ = _rows_drawn(setup, ph, state, arrays, rows_B, batch)
        return loss.l1_per_image(drawn, targets, setup.cfg.train.normalise)

    parts = [
        chunk(state, setup.ds.arrays, rows, batch)
        for rows, batch, _ in _row_chunks(setup, ph, np.asarray(state.items_M))
    ]
    return np.concatenate([np.asarray(p) for p in parts])[: ph.rows]


def poor_fits(loss_M: np.ndarray) -> np.ndarray:
    """Rows whose loss is over ``POOR_FIT`` times the 10th percentile of all rows' losses: rows that likely
    sit on a wrong pose, found without a ground truth (docs/method.md §8)."""
    return loss_M > POOR_FIT * np.percentile(loss_M, 10)


def poor_fit_share(loss_M: np.ndarray) -> float:
    """The share of rows that fit poorly (``poor_fits``)."""
    return float(np.mean(poor_fits(loss_M)))


def _grid(cloud_Nx3: np.ndarray) -> np.ndarray:
    """VOXELS^3 points over a cube around the cloud (1.3 times its reach from its centroid), V x 3."""
    c = cloud_Nx3.mean(0)
    half = 1.3 * float(np.linalg.norm(cloud_Nx3 - c, axis=1).max())
    g = np.linspace(-half, half, VOXELS)
    return (np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + c).astype(np.float32)


def read_at(where_Vx3: jax.Array, R_3x3: jax.Array, t_2: jax.Array, maps_HxWxC: jax.Array, size) -> jax.Array:
    """Each 3D place's values in an image's maps at the pixel it projects to under the pose (R, t), V x C;
    zero outside the image."""
    px, py = render.project(where_Vx3, R_3x3, t_2, size)
    ix, iy = jnp.round(px).astype(jnp.int32), jnp.round(py).astype(jnp.int32)
    inside = (ix >= 0) & (ix < size[1]) & (iy >= 0) & (iy < size[0])
    read = maps_HxWxC[jnp.clip(iy, 0, size[0] - 1), jnp.clip(ix, 0, size[1] - 1)]
    return jnp.where(inside[:, None], read, 0.0)


def unexplained(setup: Setup, ph: Phase, state: RefineState, grid_Vx3: np.ndarray) -> np.ndarray:
    """The intensity the rows' images hold that the cloud at their poses does not draw, back-projected: for
    every grid point, the sum over rows of max(target - drawn, 0) (normalised images) at the pixel it
    projects to, V. A feature the cloud lacks stands out where it is; where rows are spread over copies of a
    false symmetry, it stands out at each copy."""
    mode, size = setup.cfg.train.normalise, setup.ds.size

    @functools.partial(compiler.jit, out_shardings=setup.replicated())
    def chunk(state, arrays, rows_B, batch, valid_B, grid_Vx3):
        targets, drawn, R, t = _rows_drawn(setup, ph, state, arrays, rows_B, batch)
        left = jnp.maximum(loss.normalise(targets, mode) - loss.normalise(drawn, mode), 0.0)[..., None]
        read = jax.vmap(read_at, in_axes=(None, 0, 0, 0, None))(grid_Vx3, R, t, left, size)[..., 0]
        return jnp.einsum("b,bv->v", valid_B.astype(left.dtype), read, precision=jax.lax.Precision.HIGHEST)

    grid = jnp.asarray(grid_Vx3)
    parts = [
        chunk(state, setup.ds.arrays, r, b, v, grid) for r, b, v in _row_chunks(setup, ph, np.asarray(state.items_M))
    ]
    return np.asarray(jax.device_get(sum(parts)), np.float64)


def point_reads(setup: Setup, points_Ux3: jax.Array, R_Bx3x3, t_Bx2, sigma_B, targets_BxHxW) -> jax.Array:
    """Each learned point's reading of a batch's images at their poses, summed over the batch's better-fitting
    half of rows (L1 at or under the batch's median), U x 2: the normalised target and the part of it the
    cloud does not draw (max(n(target) - n(drawn), 0)), at the pixel the point projects to; under an imposed
    group, a learned point's sum over its copies. A point on the structure reads its image's intensity in
    nearly every row, a stray one background in most. Rows on a wrong pose fit about twice as badly and are
    left out: their intensity lies where the structure is not, and would pull relocated points there."""
    mode, size = setup.cfg.train.normalise, setup.ds.size
    cloud = forward.cloud(setup, points_Ux3)
    target = loss.normalise(targets_BxHxW, mode)
    drawn = loss.normalise(render.render_poses(cloud, R_Bx3x3, t_Bx2, sigma_B, size), mode)
    maps = jnp.stack([target, jnp.maximum(target - drawn, 0.0)], -1)
    fit_B = jnp.sum(jnp.abs(target - drawn), axis=(-2, -1))  # the row's loss
    better_B = (fit_B <= jnp.median(fit_B)).astype(target.dtype)
    read_BxPx2 = jax.vmap(read_at, in_axes=(None, 0, 0, 0, None))(cloud, R_Bx3x3, t_Bx2, maps, size)
    read = jnp.einsum("b,bpc->pc", better_B, read_BxPx2, precision=jax.lax.Precision.HIGHEST)
    return read.reshape(-1, points_Ux3.shape[0], 2).sum(0)


def relocate_strays(points_Ux3: jax.Array, support_U: jax.Array, unexplained_U: jax.Array, key: jax.Array):
    """Stray points moved onto the structure (traced): points reading under ``STRAY`` times the median
    point's intensity (``point_reads``) go each beside one of the other points, those with the most
    unexplained intensity at them first (where the cloud draws least of what the images hold), offset by a
    Gaussian of spread half the other points' median nearest-neighbour distance (over at most
    ``SPACING_SAMPLE`` of them); the refinement's gradient pulls them on. Returns (points, moved_U); nothing
    moves when fewer than two points are left."""
    n = points_Ux3.shape[0]
    stray = support_U < STRAY * jnp.median(support_U)
    kept = n - jnp.sum(stray)
    order = jnp.argsort(jnp.where(stray, jnp.inf, -unexplained_U), stable=True)  # the kept, most unexplained first
    to = order[(jnp.cumsum(stray) - 1) % jnp.maximum(kept, 1)]
    sample = jnp.argsort(stray, stable=True)[: min(n, SPACING_SAMPLE)]  # kept points first: memory stays bounded
    distance = jnp.linalg.norm(points_Ux3[sample, None] - points_Ux3[None], axis=-1)
    distance = jnp.where(stray[None] | (sample[:, None] == jnp.arange(n)), jnp.inf, distance)
    spacing = jnp.nanmedian(jnp.where(stray[sample], jnp.nan, distance.min(1)))
    moved = stray & (kept >= 2)
    offset = jax.random.normal(key, points_Ux3.shape, points_Ux3.dtype) * 0.5 * spacing
    return jnp.where(moved[:, None], points_Ux3[to] + offset, points_Ux3), moved


def seed_feature(points_Nx3: np.ndarray, grid_Vx3: np.ndarray, unexplained_V: np.ndarray, seed: int):
    """Points moved to the strongest unexplained place outside the cloud: the FEATURE_SHARE of the points
    with the nearest neighbours (the densest, most redundant) go to a small ball around that place (spread
    half the cloud's median nearest-neighbour distance), if it stands PEAK_SCORE robust deviations above
    the other places outside the cloud. Returns (points, moved indices, score),
    the points unchanged and no indices when nothing stands out."""
    tree = cKDTree(points_Nx3)
    neighbour = tree.query(points_Nx3, k=2)[0][:, 1]
    spacing = float(np.median(neighbour))
    outside = tree.query(grid_Vx3)[0] > 2 * spacing
    if outside.sum() < 2:
        return points_Nx3, np.zeros(0, int), 0.0
    values = unexplained_V[outside]
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre)) + 1e-12
    score = float((values.max() - centre) / spread)
    if score < PEAK_SCORE:
        return points_Nx3, np.zeros(0, int), score
    peak = grid_Vx3[outside][np.argmax(values)]
    moved = np.argsort(neighbour, kind="stable")[: max(1, round(FEATURE_SHARE * len(points_Nx3)))]
    points = np.array(points_Nx3, copy=True)
    jitter = np.random.default_rng(seed).normal(size=(len(moved), 3)) * 0.5 * spacing
    points[moved] = peak + jitter
    return points, moved, score


def _searched(setup: Setup, state: RefineState, R0_Bx3x3, gathered: dict, moments: tuple, targets_BxHxW):
    """Gathered rows searched again (``search.search``) against the current cloud: a row whose image the
    search's pose fits better than its own moves there and starts afresh (omega, Adam moments and count
    zero), its sigma kept. Returns (moved_B, R0, rows, (mu, nu, count)) as ``_relabelled``."""
    cloud, size, mode = forward.cloud(setup, state.points), setup.ds.size, setup.cfg.train.normalise
    R = row_rotations(R0_Bx3x3, gathered["omega"])
    own = loss.l1_per_image(render.render_poses(cloud, R, gathered["t"], gathered["sigma"], size), targets_BxHxW, mode)
    found = search.search(cloud, targets_BxHxW, gathered["sigma"], size, mode, search.settings(setup.cfg))
    return _restarted(found.loss_B < own, found.R_Bx3x3, found.t_Bx2, R0_Bx3x3, gathered, moments)


def each_row(setup: Setup, ph: Phase, state: RefineState, change: Callable) -> tuple[RefineState, int]:
    """Every row changed once by ``change`` (``_relabelled`` or ``_searched``), a batch at a time; returns the
    state and how many rows moved."""

    @functools.partial(compiler.jit, donate_argnums=0, out_shardings=(setup.replicated(), setup.replicated()))
    def chunk(state, arrays, rows_B, batch, valid_B):
        targets = data.targets(setup.ds, arrays, batch, jnp.float32(ph.sigma), jnp.int32(setup.total_steps))
        gathered = jax.tree.map(lambda x: x[rows_B], state.rows)
        moments = tuple(jax.tree.map(lambda x: x[rows_B], m) for m in (state.mu, state.nu, state.count_M))
        moved, R0, rows, (mu, nu, count) = change(setup, state, state.R0_Mx3x3[rows_B], gathered, moments, targets)
        rows_B = jnp.where(valid_B, rows_B, rows_B[0])  # padding repeats the chunk's first row, unchanged
        scatter = lambda full, part: full.at[rows_B].set(jnp.where(_bcast(valid_B, part), part, full[rows_B]))
        state = state.replace(
            R0_Mx3x3=scatter(state.R0_Mx3x3, R0),
            rows=jax.tree.map(scatter, state.rows, rows),
            mu=jax.tree.map(scatter, state.mu, mu),
            nu=jax.tree.map(scatter, state.nu, nu),
            count_M=scatter(state.count_M, count),
        )
        return state, jnp.sum(moved & valid_B)

    counts = []
    for rows, batch, valid in _row_chunks(setup, ph, np.asarray(state.items_M)):
        state, moved = chunk(state, setup.ds.arrays, rows, batch, valid)
        counts.append(moved)  # summed once at the end: no wait on the device per chunk
    return state, int(sum(counts))


def _bcast(valid_B: jax.Array, x: jax.Array) -> jax.Array:
    return valid_B.reshape((-1,) + (1,) * (x.ndim - 1))


def break_symmetry(setup: Setup, ph: Phase, state: RefineState) -> tuple[RefineState, str]:
    """Break a false symmetry of the learned cloud: rows posed on different copies of a near-symmetric shape
    average its distinguishing feature away, and the cloud then has nothing to tell the copies apart by.
    The rows' unexplained intensity, back-projected, shows the feature (at each copy); points are moved to
    the strongest place (any copy will do: choosing one breaks the symmetry), the cloud's near-symmetries
    (found before the move) become the relabelling turns, and every row is relabelled against the new
    cloud; with ``search.at_break``, every row is then searched again against it (``_searched``). Returns
    the state and a line saying what was done."""
    cloud = forward.full_cloud(setup, state.points)
    turns = relabelling_turns(cloud)
    grid = _grid(cloud)
    points, moved, score = seed_feature(
        np.asarray(state.points), grid, unexplained(setup, ph, state, grid), int(setup.cfg.seed)
    )
    state = state.replace(points=jnp.asarray(points, state.points.dtype), turns_Kx3x3=jnp.asarray(turns))
    state, relabelled = each_row(setup, ph, setup.replicate(state), _relabelled)
    found = int(np.sum(np.any(np.abs(turns - np.eye(3)) > 1e-6, axis=(1, 2))))
    placed = (
        f"{len(moved)} points moved to the strongest unexplained place (score {score:.0f})"
        if len(moved)
        else f"no unexplained place stands out (score {score:.1f} < {PEAK_SCORE:.0f})"
    )
    said = f"{found} near-symmetries of the learned cloud; {placed}; {relabelled} of {ph.rows} rows relabelled"
    if setup.cfg.search.at_break:  # the cloud has improved since the rows started: look everywhere again
        state, searched = each_row(setup, ph, state, _searched)
        said += f"; {searched} took the global search's pose"
    return state, said


def search_again(setup: Setup, ph: Phase, state: RefineState) -> tuple[RefineState, str]:
    """Every row searched again (``_searched``) against the cloud refined so far (``search.again_at``): rows
    left on a wrong copy of a near-symmetric cloud, which the cloud could not yet tell apart when they were
    last searched, move where its feature now fits their images. Returns the state and a line saying so."""
    state, searched = each_row(setup, ph, state, _searched)
    return state, f"every row searched again: {searched} of {ph.rows} took the global search's pose"


def _milestones(ph: Phase) -> list[tuple[int, Callable]]:
    """The refinement's one-off passes over every row, by step (the breaking first at a shared step)."""
    passes = [(ph.relabel_after, break_symmetry), (ph.search_again, search_again)]
    return sorted(((at, action) for at, action in passes if at), key=lambda p: p[0])


def initial_state(setup: Setup, state: TrainState, ph: Phase) -> RefineState:
    """Rows for the first ``ph.rows`` training items, started from the network's winning hypothesis (or,
    with ``search.use="refine"``, the global search's pose where its loss is lower)."""
    items = np.asarray(setup.ds.splits["train"][: ph.rows], np.int32)
    b = setup.batch_size
    sigma = jnp.float32(ph.sigma)

    searched = setup.cfg.search.use == "refine"

    @functools.partial(compiler.jit, out_shardings=setup.replicated())
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
    turns = (
        relabelling_turns(forward.full_cloud(setup, state.params["points"])) if ph.relabel_every else np.eye(3)[None]
    )
    return _fresh_state(
        setup,
        ph,
        jnp.asarray(np.asarray(state.params["points"])),  # a copy: the train state may be donated
        jnp.asarray(items),
        jnp.asarray(R, jnp.float32),
        jnp.asarray(t, jnp.float32),
        jnp.asarray(s, jnp.float32),
        jnp.asarray(turns, jnp.float32).reshape(-1, 3, 3),
    )


def _fresh_state(
    setup: Setup,
    ph: Phase,
    points: jax.Array,
    items_M: jax.Array,
    R0_Mx3x3: jax.Array,
    t_Mx2: jax.Array,
    sigma_M: jax.Array,
    turns_Kx3x3: jax.Array,
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
        turns_Kx3x3=turns_Kx3x3,
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
        jnp.zeros((MAX_TURNS if ph.relabel_every else 1, 3, 3)),
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
        rec.settle()  # the last save's pictures are drawn (or their error raised) before the next checkpoint
        checkpoints.save(mngr, done, rstate)
        if rec.primary:  # the point files now, the pictures on the recorder's thread while the steps go on
            points, records = np.asarray(forward.full_cloud(setup, rstate.points)), rec.records()
            outputs.write_shape(workdir, f"shape_refine_s{done}", points)

            def draw() -> None:
                plots.save_curves(workdir / "pictures" / "curves.png", records)
                plots.save_cloud_views(workdir / "pictures" / "cloud.png", points, title=f"refinement step {done}")

            rec.later(draw)

    cfg = setup.cfg
    spec = lambda total: loop.Loop(  # noqa: E731
        "refinement", total, ph.batch_size, int(cfg.train.log_every), int(cfg.train.save_every)
    )
    run = lambda rstate, start, total: loop.drive(  # noqa: E731
        spec(total),
        rstate,
        start,
        lambda s, rows_batch: step_fn(s, setup.ds.arrays, *rows_batch),
        batches(setup, ph, np.asarray(rstate.items_M), start),
        report,
        save,
        rec.primary,
    )
    for at, action in _milestones(ph):  # a checkpoint at a milestone's step holds the state before it
        if start <= at:
            rstate = run(rstate, start, at)
            rstate, said = action(setup, ph, rstate)
            rec.say(f"refine step {at}: {said}")
            start = at
    rstate = run(rstate, start, ph.steps)
    mngr.wait_until_finished()
    return rstate


def with_points(state: TrainState, rstate: RefineState | None) -> TrainState:
    """The train state carrying the refined points (unchanged without refinement)."""
    if rstate is None:
        return state
    return state.replace(params={**state.params, "points": rstate.points})
