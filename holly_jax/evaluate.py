"""Evaluating a trained run: metrics against a ground truth, renders, montages, an animation, a report.

``evaluate(setup, state, workdir)`` writes ``WORKDIR/eval/``: ``metrics.json``
(aligned Chamfer and Hausdorff distances, the truth's symmetry, rotation
errors of the predicted poses in the cloud's frame and modulo that symmetry
and any imposed group, for a run that searches also those of the held-out
images posed by the global search against the learned cloud, held-out loss, the point group the learned cloud
itself suggests with every candidate's score; docs/method.md §8),
``symmetry.png`` (those scores), ``poses.csv`` (every pose behind them; for real data every
particle's or image's pose, keyed by its group id or file name), the
aligned cloud beside the ground truth as PLY, pictures, an animation, and
``WORKDIR/report.html``. It needs the run's setup and state, not how they
were made: the pipeline hands them over after training, or reads them back
from a workdir.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from holly_jax import (
    compiler,
    data,
    faults,
    forward,
    input_pipeline,
    metrics,
    outputs,
    plots,
    pointfile,
    poses,
    refine,
    render,
    rotations,
    search,
    symmetry,
)
from holly_jax.atomic import write_atomic
from holly_jax.setup import Setup
from holly_jax.train import TrainState

DEFAULT_POSES = ("euler:0,0,0", "euler:90,0,0", "euler:0,90,0", "euler:0,0,90", "euler:45,30,60", "euler:180,0,0")


def render_truth(truth_Nx3: np.ndarray, R_Bx3x3: np.ndarray, sigma: float, size: tuple[int, int]) -> np.ndarray:
    """The ground truth at rotations R (no translation), all points on."""
    b = len(R_Bx3x3)
    return np.asarray(
        render.render_poses(
            jnp.asarray(truth_Nx3), jnp.asarray(R_Bx3x3, jnp.float32), jnp.zeros((b, 2)), jnp.full((b,), sigma), size
        )
    )


def held_out(setup: Setup, sigma: float, limit: int = 1000) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Validation (else test) targets at ``sigma``, for simulated data their true rotations, and their items."""
    idx = setup.ds.splits["valid"] if len(setup.ds.splits["valid"]) else setup.ds.splits["test"]
    idx = np.asarray(idx[:limit])
    return (*images_of(setup, idx, sigma), idx)


def true_rotations(setup: Setup, idx: np.ndarray) -> np.ndarray:
    """The rotations simulated items were drawn at."""
    return np.asarray(_matrices_from_axis_angle(setup.ds.arrays.table.rotation_Mx3[jnp.asarray(idx)]))


def images_of(setup: Setup, idx: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Items' target images at ``sigma`` (FITS images from the schedule's final entry, localisation particles
    at their step-0 angles) and, for simulated data, their true rotations."""
    if len(idx) == 0:
        return np.zeros((0, *setup.ds.size), np.float32), None
    targets_of = _targets_of(setup.ds)

    def chunk(start, stop):  # every chunk IMAGES_CHUNK long (the last padded, cut off after): one compile
        items = np.resize(idx[start:stop], IMAGES_CHUNK)
        batch = jnp.asarray(input_pipeline.host_batch(setup, items, setup.total_steps))
        return targets_of(setup.ds.arrays, batch, jnp.float32(sigma))

    targets = forward.batched(chunk, len(idx), IMAGES_CHUNK)
    return targets, (true_rotations(setup, idx) if setup.ds.source == "simulated" else None)


IMAGES_CHUNK = 64
_TARGETS_OF: list = [None, None]  # the last data set and its jitted target drawing: compiled once per run


def _targets_of(ds: data.Dataset) -> Callable:
    if _TARGETS_OF[0] is not ds:
        _TARGETS_OF[:] = [
            ds,
            jax.jit(lambda arrays, batch, sigma: data.targets(ds, arrays, batch, sigma, jnp.int32(0))),
        ]
    return _TARGETS_OF[1]


_matrices_from_axis_angle = jax.jit(jax.vmap(rotations.axis_angle_to_matrix))
_matrices_from_quaternion = jax.jit(jax.vmap(rotations.quaternion_to_matrix))
_random_quaternions = jax.jit(jax.vmap(rotations.random_quaternion))
# every leg's frames: quaternions a_L, b_L at fractions t_F -> L x F x 4
_slerp_legs = jax.jit(jax.vmap(jax.vmap(rotations.slerp, in_axes=(None, None, 0)), in_axes=(0, 0, None)))


def searched_poses(
    setup: Setup, state: TrainState, images_BxHxW: np.ndarray, pred: forward.Prediction, batch: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's pose from the global search (``config.search``) against the learned cloud, drawn at the
    network's sigma, where it fits the image better than the network's pose ``pred`` (a refinement row
    starts so): rotations, translations and losses."""
    settings, size, mode = search.settings(setup.cfg), setup.ds.size, setup.cfg.train.normalise
    fn = compiler.jit(lambda cloud, x, s: search.search(cloud, x, s, size, mode, settings))
    cloud = forward.cloud(setup, jnp.asarray(state.params["points"]))
    images, sigma_B = np.asarray(images_BxHxW, np.float32), np.asarray(pred.sigma_B, np.float32)

    def chunk(start, stop):  # the last chunk padded with its last image: one compiled shape
        pad = lambda x: np.concatenate([x, np.repeat(x[-1:], batch - len(x), 0)])  # noqa: E731
        found = fn(cloud, jnp.asarray(pad(images[start:stop])), jnp.asarray(pad(sigma_B[start:stop])))
        return found.R_Bx3x3, found.t_Bx2, found.loss_B

    R, t, loss_B = forward.batched(chunk, len(images), batch)
    better = loss_B < pred.loss_B
    return (
        np.where(better[:, None, None], R, pred.pose.R_Bx3x3),
        np.where(better[:, None], t, pred.pose.t_Bx2),
        np.where(better, loss_B, pred.loss_B),
    )


def tour_rotations(seed: int, stops: int = 24, frames_per_leg: int = 6) -> np.ndarray:
    """Random rotations in greedy nearest-neighbour order, slerped between: a smooth tour, B x 3 x 3."""
    q = np.asarray(_random_quaternions(jax.random.split(jax.random.key(seed), stops)))
    q = q[poses.greedy_tour(np.asarray(_matrices_from_quaternion(jnp.asarray(q))))]
    frames = _slerp_legs(jnp.asarray(q[:-1]), jnp.asarray(q[1:]), jnp.arange(frames_per_leg) / frames_per_leg)
    return np.asarray(_matrices_from_quaternion(frames.reshape(-1, 4)))


def item_names(setup: Setup) -> list[str] | None:
    """What poses.csv calls each item: FITS file names, localisation group ids, else the index."""
    if setup.ds.fits_images is not None:
        return [Path(f).name for f in setup.ds.fits_images.load(setup.ds.fits_images.entry_folders[0]).files]
    if setup.ds.groups is not None:
        return [str(g) for g in setup.ds.groups]
    return None


def file_frame(setup: Setup, idx: np.ndarray, R_Bx3x3, t_Bx2, step: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poses found for images of items ``idx`` drawn at ``step`` (the evaluation's at 0, the refinement's at
    the last training step) in the items' own frame: for localisation particles, the in-plane turn they
    were drawn at undone (data.in_plane); else unchanged."""
    R_Bx3x3, t_Bx2 = np.asarray(R_Bx3x3, np.float64), np.asarray(t_Bx2, np.float64)
    if setup.ds.source != "locs":
        return R_Bx3x3, t_Bx2
    turn = np.asarray(data.in_plane(setup.ds.arrays, jnp.asarray(idx), jnp.int32(step)), np.float64)
    R = np.einsum("bji,bjk->bik", turn, R_Bx3x3)
    t = np.einsum("bji,bj->bi", turn[:, :2, :2], t_Bx2)
    return R, t


def training_poses(setup: Setup, predictor: forward.Predictor, sigma: float, table: PoseTable) -> None:
    """Real data: the network's pose of every training particle or image, as ``train`` rows of ``table``."""
    if setup.ds.source == "simulated":
        return
    idx = np.asarray(setup.ds.splits["train"])
    for start in range(0, len(idx), 1024):  # bounded memory on the host
        part = idx[start : start + 1024]
        targets, _ = images_of(setup, part, sigma)
        pred = predictor(targets, sigma)
        R, t = file_frame(setup, part, pred.pose.R_Bx3x3, pred.pose.t_Bx2)
        table.add("train", part, R, t, pred.sigma_B, pred.loss_B, None, None)


def pose_errors(
    setup: Setup,
    predictor: forward.Predictor,
    sigma: float,
    frame: list[tuple[np.ndarray, bool]] | None,
    group_Gx3x3: np.ndarray,
    table: PoseTable,
    rows: int | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """Rotation errors of the network's poses ("train_") on the first ``limit`` training images (simulated
    data; after refinement, as many as the table has ``rows``); their rows go to ``table``."""
    if setup.ds.source != "simulated":
        return {}
    idx = np.asarray(setup.ds.splits["train"][:limit])
    if rows is not None:
        idx = idx[:rows]  # the refinement table's rows are the first training images: the same images
    targets, R_true = images_of(setup, idx, sigma)
    pred = predictor(targets, sigma)
    error = poses.rotation_error(R_true, pred.pose.R_Bx3x3, frame, group_Gx3x3, setup.group)
    table.add("train", idx, pred.pose.R_Bx3x3, pred.pose.t_Bx2, pred.sigma_B, pred.loss_B, R_true, error.errors_deg)
    results = {"train_images": len(idx), **{f"train_{k}": v for k, v in error.summary().items()}}
    return results


def refined_poses(
    setup: Setup,
    refined: refine.RefineState,
    table: PoseTable,
    frame: list[tuple[np.ndarray, bool]] | None,
    group_Gx3x3: np.ndarray,
) -> dict[str, Any]:
    """The refinement table's rows in ``table`` (any data; localisation particles in the file's frame) with
    each row's loss against its image, and the rows' loss median and poor-fit share
    (``refine.poor_fit_share``); for simulated data also their rotation errors ("refined_") and how often
    the poor-fit flag agrees with them (a row more than 10 degrees off)."""
    loss_M = refine.row_losses(setup, refine.phase(setup), refined)
    rows = jax.device_get(refined.rows)
    items = np.asarray(refined.items_M)
    R = np.asarray(refine.rotations_of(refined), np.float64)
    results: dict[str, Any] = {
        "refined_loss_median": float(np.median(loss_M)),
        "refined_poor_fit_share": refine.poor_fit_share(loss_M),
    }
    R_true = errors = None
    if setup.ds.source == "simulated":
        R_true = true_rotations(setup, items)
        error = poses.rotation_error(R_true, R, frame, group_Gx3x3, setup.group)
        errors = error.errors_deg
        results.update({f"refined_{k}": v for k, v in error.summary().items()})
        results["refined_poor_fit_agrees"] = float(np.mean(refine.poor_fits(loss_M) == (errors > 10.0)))
    R, t = file_frame(setup, items, R, rows["t"], step=setup.total_steps)
    table.add("refined", items, R, t, rows["sigma"], loss_M, R_true, errors)
    return results


class PoseTable:
    """``eval/poses.csv``: one row per image and source of poses (held-out and training images by the
    network, the refinement table's rows): item (a localisation particle's group id, a FITS file name), the
    predicted rotation as a quaternion (w, x, y, z) and a rotation vector (radians), translation (object
    units, and nm where the run has a scale), sigma, loss and, for simulated data, the true rotation and
    the symmetry-aware error in degrees. A localisation particle's pose is in the file's own frame: the
    in-plane turn it was drawn at is undone."""

    HEADER = [
        "split",
        "item",
        "qw",
        "qx",
        "qy",
        "qz",
        "rx",
        "ry",
        "rz",
        "tx",
        "ty",
        "tx_nm",
        "ty_nm",
        "sigma",
        "loss",
        "true_qw",
        "true_qx",
        "true_qy",
        "true_qz",
        "error_deg",
    ]

    def __init__(self, names: list[str] | None = None, nm_per_unit: float | None = None):
        self.names, self.nm_per_unit, self.rows = names, nm_per_unit, []

    def add(self, split, items, R_Bx3x3, t_Bx2, sigma_B, loss_B, R_true_Bx3x3, errors_deg) -> None:
        rot = Rotation.from_matrix(np.asarray(R_Bx3x3, np.float64))
        q, rv = rot.as_quat()[:, [3, 0, 1, 2]], rot.as_rotvec()
        true_q = (
            Rotation.from_matrix(np.asarray(R_true_Bx3x3, np.float64)).as_quat()[:, [3, 0, 1, 2]]
            if R_true_Bx3x3 is not None
            else None
        )
        t, sigma = np.asarray(t_Bx2, np.float64), np.asarray(sigma_B, np.float64)
        for i, item in enumerate(np.asarray(items)):
            name = self.names[int(item)] if self.names else int(item)
            self.rows.append(
                [
                    split,
                    name,
                    *q[i],
                    *rv[i],
                    *t[i],
                    *(t[i] * self.nm_per_unit if self.nm_per_unit else ["", ""]),
                    sigma[i],
                    "" if loss_B is None else float(np.asarray(loss_B)[i]),
                    *(true_q[i] if true_q is not None else [""] * 4),
                    "" if errors_deg is None else float(errors_deg[i]),
                ]
            )

    def write(self, path: Path) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.HEADER)
        writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in self.rows])
        write_atomic(path, buf.getvalue().encode())


def evaluate(
    setup: Setup,
    state: TrainState,
    workdir: Path,
    truth: str | Path | None = None,
    pose_texts: Sequence[str] = DEFAULT_POSES,
    quiet: bool = False,
    refined: refine.RefineState | None = None,
) -> dict[str, Any]:
    """Evaluate a run's state (carrying the refined points, if it was refined, with the refined poses in
    ``refined``); see the module docstring for what is written."""
    out = workdir / "eval"
    rotations_given = np.stack([poses.parse_pose(p) for p in pose_texts]) if pose_texts else np.zeros((0, 3, 3))
    truth_path = truth or (setup.cfg.data.object if setup.ds.source == "simulated" else None)
    truth_Mx3 = pointfile.read_points(truth_path).astype(np.float64) if truth_path else None
    learned = forward.full_cloud(setup, state.params["points"]).astype(np.float64)
    sigma = forward.final_sigma(setup)
    predictor = forward.Predictor(setup, state)
    results: dict[str, Any] = {
        "step": int(state.step),
        "truth": str(truth_path) if truth_path else None,
        "sigma": sigma,
        "points": len(learned),
    }
    if refined is not None:
        results["refine_step"] = int(refined.step)

    frame, group = None, np.eye(3)[None]
    table = PoseTable(item_names(setup), setup.ds.scale.nm_per_unit if setup.ds.scale else None)
    if setup.ds.scale is not None:
        results["nm_per_unit"] = setup.ds.scale.nm_per_unit
    if truth_Mx3 is not None:
        alignment = metrics.align(learned, truth_Mx3, seed=int(setup.cfg.seed))
        aligned = alignment.apply(learned)
        symmetric = symmetry.find(truth_Mx3)
        frame = poses.cloud_frames(alignment.R, alignment.mirrored, symmetric.mirror)
        group = symmetric.rotations_Gx3x3
        results.update(symmetric.summary())
        results.update(
            {
                "truth_points": len(truth_Mx3),
                "chamfer": alignment.chamfer,
                "hausdorff": metrics.hausdorff(aligned, truth_Mx3),
                "cloud_mirrored": bool(alignment.mirrored),
                "chamfer_unaligned": metrics.chamfer(learned, truth_Mx3),
            }
        )
        pointfile.write_points(out / "aligned.ply", aligned)
        pointfile.write_points(out / "truth.ply", truth_Mx3)
        plots.save_cloud_views(
            out / "cloud.png",
            aligned,
            truth_Mx3,
            title=f"learned (colour) aligned to the ground truth (grey): Chamfer {alignment.chamfer:.4f}",
        )
    else:
        plots.save_cloud_views(out / "cloud.png", learned, title="learned points (no ground truth given)")
    detected = symmetry.rank(learned)  # what the learned cloud's own symmetry suggests imposing
    results.update(detected.summary())
    if setup.group is not None:  # the learned cloud holds the imposed group by construction: does it explain
        # what was detected? A group that does not contain it means more symmetry than imposed, e.g. a ring
        # smeared round its axis: the imposed group may be wrong
        results["imposed_group_in_detected"] = symmetry.contains(detected.best.rotations_Gx3x3, setup.group)
    plots.save_symmetry_scores(out / "symmetry.png", detected, title="the learned cloud's symmetry")

    targets, R_true, idx = held_out(setup, sigma)
    if len(targets):
        pred = predictor(targets, sigma)
        errors = None
        if R_true is not None:
            error = poses.rotation_error(R_true, pred.pose.R_Bx3x3, frame, group, setup.group)
            results.update(error.summary())
            errors = error.errors_deg
        R, t = file_frame(setup, idx, pred.pose.R_Bx3x3, pred.pose.t_Bx2)
        table.add("heldout", idx, R, t, pred.sigma_B, pred.loss_B, R_true, errors)
        if setup.cfg.search.use != "none":  # the held-out images posed against the learned cloud, as rows start
            R, t, loss_B = searched_poses(setup, state, targets, pred)
            errors = None
            if R_true is not None:
                error = poses.rotation_error(R_true, R, frame, group, setup.group)
                results.update({f"heldout_searched_{k}": v for k, v in error.summary().items()})
                errors = error.errors_deg
            R, t = file_frame(setup, idx, R, t)
            table.add("heldout_searched", idx, R, t, pred.sigma_B, loss_B, R_true, errors)
        results.update(
            {
                "heldout_images": len(targets),
                "heldout_loss": float(np.mean(pred.loss_B)),
                "heldout_sigma_out": float(np.mean(pred.sigma_B)),
            }
        )
        k = min(16, len(targets))
        plots.save_png(
            out / "montage_in.png", plots.montage(targets[:k], cols=4), scale=plots.enlargement(setup.ds.size)
        )
        plots.save_png(
            out / "montage_out.png",
            plots.montage(pred.images_BxHxW[:k], cols=4),
            scale=plots.enlargement(setup.ds.size),
        )
        plots.save_png(
            out / "pairs.png", plots.pairs(targets[:k], pred.images_BxHxW[:k]), scale=plots.enlargement(setup.ds.size)
        )

    results.update(
        pose_errors(setup, predictor, sigma, frame, group, table, None if refined is None else len(refined.items_M))
    )
    if refined is not None:
        results.update(refined_poses(setup, refined, table, frame, group))
    training_poses(setup, predictor, sigma, table)
    table.write(out / "poses.csv")

    if truth_Mx3 is not None and len(rotations_given):
        given = render_truth(truth_Mx3, rotations_given, sigma, setup.ds.size)
        pred = predictor(given, sigma)
        plots.save_png(
            out / "poses.png", plots.pairs(given, pred.images_BxHxW, cols=3), scale=plots.enlargement(setup.ds.size)
        )
        results["poses"] = [{"pose": text, "loss": float(value)} for text, value in zip(pose_texts, pred.loss_B)]

    if truth_Mx3 is not None:
        tour = tour_rotations(int(setup.cfg.seed))
        frames_in = render_truth(truth_Mx3, tour, sigma, setup.ds.size)
        frames_out = predictor(frames_in, sigma).images_BxHxW
        plots.save_gif(
            out / "animation.gif", plots.side_by_side(frames_in, frames_out), scale=plots.enlargement(setup.ds.size)
        )

    faults.point("evaluation")
    outputs.write_json(out / "metrics.json", results)
    write_report(workdir, results)
    if not quiet:
        print(format_table(results))
    return results


def _shown(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """The results a table shows: the scalars, and each list of error groups as one line of text."""
    text = lambda groups: ", ".join(f"{g['share']:.0%} at {g['error_deg']:.0f} deg" for g in groups) or "none"
    return [
        (k, text(v) if k.endswith("rotation_error_groups") else v)
        for k, v in results.items()
        if not isinstance(v, (list, dict)) or k.endswith("rotation_error_groups")
    ]


def format_table(results: dict[str, Any]) -> str:
    rows = _shown(results)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)


def write_report(workdir: Path, results: dict[str, Any] | None = None) -> None:
    """``report.html``: the run's pictures, animation and metrics on one page (relative links)."""
    pictures = [
        ("Training curves", "pictures/curves.png"),
        ("Inputs and outputs (training)", "pictures/pairs.png"),
        ("Point cloud", "pictures/cloud.png"),
        ("Aligned to the ground truth", "eval/cloud.png"),
        ("Held-out inputs | outputs", "eval/pairs.png"),
        ("Ground truth at given poses | output", "eval/poses.png"),
        ("Tour of random rotations: input | output", "eval/animation.gif"),
        ("Point groups scored on the learned cloud (lower maps it better onto itself)", "eval/symmetry.png"),
        ("Half-set FSC (half A against half B; the average against the ground truth)", "eval/fsc.png"),
    ]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>holly-jax report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
        "td{padding:2px 12px}</style>",
        f"<h1>holly-jax run: {workdir.resolve().name}</h1>",
    ]
    if results:
        rows = "".join(
            f"<tr><td>{k}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else f"<tr><td>{k}</td><td>{v}</td></tr>"
            for k, v in _shown(results)
        )
        parts.append(f"<h2>Metrics</h2><table>{rows}</table>")
    for title, rel in pictures:
        if (workdir / rel).exists():
            parts.append(f"<h2>{title}</h2><img src='{rel}' alt='{title}'>")
    write_atomic(workdir / "report.html", "\n".join(parts).encode())
