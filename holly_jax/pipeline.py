"""The pipeline: training, then the optional phases, then evaluation; the one place that knows their order.

    fit(cfg, workdir)                  train (or resume), then refine if the config asks; final.ply, and the
                                       final cloud in nm where the run has a scale (exports.py)
    train_and_evaluate(cfg, workdir)   fit, then (train.report) evaluate and write report.html
    evaluate_workdir(workdir)          evaluate a run read back from its workdir
    halves(cfg, workdir)               fit each half of the data into workdir/half_A, half_B (each
                                       resumes), then the half-set FSC into workdir/eval (halfsets.py)

Each phase is a module that imports only what lies below it (setup, data,
forward pass, loop driver, checkpoints); this module imports the phases, and
``launch.py`` and ``sweep`` import this module. A phase resumes from its own
checkpoints: rerunning ``fit`` on a workdir finishes what an interrupted run
left. With several processes, each trains its share of the global batch and
only process 0 writes files (Orbax coordinates checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from holly_jax import checkpoints, evaluate, exports, forward, halfsets, outputs, pointfile, refine, train, workdirs
from holly_jax.errors import InputError
from holly_jax.setup import create_setup


def fit(cfg: ml_collections.ConfigDict, workdir: str | Path) -> workdirs.Saved:
    """Train (or resume) the run a config describes under ``workdir``, then refine its poses when
    ``refine.steps`` > 0; writes ``final.ply`` (the refined points, if refined)."""
    with workdirs.locked(workdir, jax.process_index() == 0):
        return _fit(cfg, Path(workdir))


def _fit(cfg: ml_collections.ConfigDict, workdir: Path) -> workdirs.Saved:
    primary = jax.process_index() == 0
    if (workdir / "config.json").exists() and any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        workdirs.check_resume(workdir, cfg)
    if primary:
        for stale in workdir.rglob(".*.tmp"):  # half-written files of a killed run (see atomic.write_atomic)
            stale.unlink(missing_ok=True)
    setup = create_setup(cfg, cache_dir=workdir / "cache" if primary else None)  # others hold images in memory
    mngr = checkpoints.manager(workdir, cfg)
    state = train.restore_or_init(setup, mngr, workdir)
    if int(state.step) > setup.total_steps:
        raise InputError(
            workdir,
            f"holds a run at step {int(state.step)}, beyond the {setup.total_steps} steps asked "
            "for: train.steps and train.epochs can only grow on resume",
        )
    # training is done: resume the refinement, if it began; training goes on: an earlier refinement is stale
    refined = refine.load(workdir, setup, state) if int(state.step) == setup.total_steps else None
    if int(state.step) < setup.total_steps and primary and refine.discard(workdir):
        tqdm.write("training goes on from a checkpoint before the refinement: the refinement will be redone")
    if primary:
        outputs.write_json(workdir / "config.json", cfg.to_dict())
        outputs.write_json(workdir / "scale.json", scale_record(setup))
    with outputs.Recorder(
        workdir, primary, resume_step=int(state.step) + (0 if refined is None else int(refined.step))
    ) as rec:  # closed however the run ends: a save's pictures are finished first
        state = train.train(setup, state, mngr, workdir, rec)
        if refine.enabled(setup):
            refined = refine.refine(setup, state, workdir, rec, refined)
            state = refine.with_points(state, refined)
        images = setup.ds.fits_images
        if images is not None and images.skipped:
            rec.say(f"warning: {images.skipped} image(s) were skipped (listed above)")
        rec.settle()  # the last save's pictures before the final files: one order of writes
        if primary:
            here = setup.local()
            points = forward.full_cloud(here, state.params["points"])
            outputs.write_shape(workdir, "final", points, subfolders=False)
            if setup.group is not None:  # the asymmetric unit the group copies
                outputs.write_shape(workdir, "final_unit", np.asarray(state.params["points"]), subfolders=False)
            scale = setup.ds.scale
            pixel_nm = scale.pixel_nm(setup.ds.size[0])
            sigma_nm = None if pixel_nm is None else forward.final_sigma(here) * pixel_nm
            written = exports.write_all(workdir, points, scale.nm_per_unit, sigma_nm)
            rec.say(f"in nm: {', '.join(written)} ({scale.nm_per_unit:.4g} nm per unit)" if written else scale.how)
    return workdirs.Saved(setup, state, refined)


def on_this_process(saved: workdirs.Saved) -> workdirs.Saved:
    """A fitted run moved to this process's own devices, for work process 0 does alone (the evaluation)."""
    if jax.process_count() == 1:
        return saved
    here = saved.setup.local()
    move = lambda tree: None if tree is None else here.replicate(jax.device_get(tree))  # noqa: E731
    return workdirs.Saved(here, move(saved.state), move(saved.refined))


def scale_record(setup) -> dict:
    """``scale.json``: nm per object unit and per image pixel (null: unitless), and how they were set."""
    scale, height = setup.ds.scale, setup.ds.size[0]
    return {"nm_per_unit": scale.nm_per_unit, "pixel_nm": scale.pixel_nm(height), "how": scale.how}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> train.TrainState:
    """``fit``, then (``train.report``, on process 0) evaluate against the ground truth and write
    ``report.html``; returns the final state (carrying the refined points, if refined)."""
    primary = jax.process_index() == 0
    with workdirs.locked(workdir, primary):
        saved = _fit(cfg, Path(workdir))
        if cfg.train.report and primary:
            here = on_this_process(saved)
            evaluate.evaluate(here.setup, here.state, Path(workdir), quiet=True, refined=here.refined)
            tqdm.write(f"report: {Path(workdir) / 'report.html'}")
    return saved.state


def evaluate_workdir(
    workdir: str | Path,
    truth: str | Path | None = None,
    pose_texts: Sequence[str] = evaluate.DEFAULT_POSES,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate the latest checkpoint of the run in ``workdir``, with its refined points and poses if it was
    refined."""
    with workdirs.locked(workdir, create=False):
        saved = workdirs.load(workdir)
        return evaluate.evaluate(
            saved.setup,
            refine.with_points(saved.state, saved.refined),
            Path(workdir),
            truth,
            pose_texts,
            quiet,
            saved.refined,
        )


HALVES = ("half_A", "half_B")


def halves(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Gold-standard half-set run: ``fit`` the config on each half of the training items (``halves.half``
    1 and 2: disjoint, seeded, independent initialisations) into ``workdir/half_A`` and ``half_B``, then
    compare their clouds (``halfsets.compare``) into ``workdir/eval``; returns the FSC results."""
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    with workdirs.locked(workdir, primary):
        if primary:
            outputs.write_json(workdir / "config.json", cfg.to_dict())
        runs = []
        for half, name in enumerate(HALVES, start=1):
            half_cfg = ml_collections.ConfigDict(cfg.to_dict())
            half_cfg.halves.half = half
            half_cfg.train.report = False
            if primary:
                tqdm.write(f"{name}: {workdir / name}")
            runs.append(fit(half_cfg, workdir / name))
        if not primary:
            return {}
        here = runs[0].setup.local()
        return compare_halves(workdir, here, *(forward.full_cloud(here, r.state.params["points"]) for r in runs))


def compare_halves(workdir: Path, setup, cloud_a: np.ndarray, cloud_b: np.ndarray) -> dict[str, Any]:
    """The half-set FSC of two halves' clouds, with ``setup``'s scale, final sigma and ground truth."""
    h = setup.ds.size[0]
    sigma = forward.final_sigma(setup) / (h / 4.0)  # px to object units
    scale = setup.ds.scale.nm_per_unit
    voxel = float(setup.cfg.halves.voxel)
    voxel = sigma / 3 if voxel == 0 else voxel / (scale or 1.0)
    truth = pointfile.read_points(setup.cfg.data.object) if setup.ds.source == "simulated" else None
    results = halfsets.compare(workdir / "eval", cloud_a, cloud_b, sigma, voxel, scale, truth, int(setup.cfg.seed))
    unit = results["unit"]
    bound = "<= " if results["resolution_0.143_at_nyquist"] else ""
    line = f"half-set FSC resolution: {bound}{results['resolution_0.143']:.4g} {unit} at 0.143"
    line += f", {results['resolution_0.5']:.4g} {unit} at 0.5"
    if "truth_resolution_0.5" in results:
        line += f"; against the ground truth {results['truth_resolution_0.5']:.4g} {unit} at 0.5"
    evaluate.write_report(workdir, results)
    tqdm.write(f"{line} ({workdir / 'report.html'})")
    return results
