"""Checkpoints: an Orbax manager per phase folder, saving a state and restoring the newest one that restores.

Each phase keeps its checkpoints in its own folder (training in
``WORKDIR/checkpoints``, refinement in ``WORKDIR/refine/checkpoints``), at most
``train.max_to_keep`` of them. Saving is synchronous and Orbax writes a
checkpoint under a temporary name before renaming it, so a listed checkpoint
was complete when written. One that no longer restores (truncated or missing
files, say from a full disk) is reported in one line and the one before it is
tried; once one restores, the newer ones are moved aside to ``damaged/`` beside
the folder (``WORKDIR/damaged``, ``WORKDIR/refine/damaged``). If none
restores, nothing is moved.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from holly_jax import faults
from holly_jax.errors import InputError


def manager(folder: Path, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The manager of ``folder/checkpoints``."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(cfg.train.max_to_keep), create=True, enable_async_checkpointing=False
    )
    directory = (Path(folder) / "checkpoints").resolve()
    if jax.process_index() == 0:  # what a killed save left half-written (Orbax's own cleanup runs a thread)
        for partial in directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save ``state`` as checkpoint ``step``; a failure (a full disk) leaves the earlier checkpoints as they
    were and is a one-line InputError."""
    kept = mngr.latest_step()
    kept = f"the checkpoint of step {kept} is kept" if kept is not None else "no earlier checkpoint exists"
    faults.point("checkpoint")
    try:
        mngr.save(step, args=ocp.args.StandardSave(state))
    except Exception as e:  # OSError from Python, other types from the array store underneath
        for partial in Path(mngr.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        reason = " ".join(str(e).split())[:160]
        raise InputError(
            mngr.directory,
            f"cannot save checkpoint {step} ({e.__class__.__name__}: {reason}); {kept}",
        ) from None


def restore_latest(
    mngr: ocp.CheckpointManager, template: Any, what: str = "checkpoint", move_damaged: bool = True
) -> Any | None:
    """The newest checkpoint that restores, shaped like ``template`` (a state or its ``jax.eval_shape``), or
    None without any. Newer ones that do not restore are reported in one line each and (``move_damaged``,
    process 0) moved to ``damaged/`` beside the folder, so the run can save those steps again; if none
    restores, nothing is moved and the error is one line naming the folder."""
    folder = Path(mngr.directory)
    failed = []
    for step in sorted(mngr.all_steps(), reverse=True):
        with _quiet("asyncio"):  # a failed read also logs each failed array's traceback: our one line says it
            try:
                restored = mngr.restore(step, args=ocp.args.StandardRestore(template))
            except Exception as e:  # orbax raises many types for a damaged or mismatched checkpoint
                failed.append((step, e.__class__.__name__))
                gc.collect()  # the failed reads' futures are collected (and would log) now, while quiet
                continue
        for bad, error in failed:
            damaged = folder.parent / "damaged" / str(bad)
            moved = move_damaged and jax.process_index() == 0
            print(
                f"warning: {what} {folder / str(bad)} does not restore ({error})"
                + (f"; moved to {damaged}" if moved else "; using the one before"),
                file=sys.stderr,
            )
            if moved:
                damaged.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(damaged, ignore_errors=True)
                shutil.move(str(folder / str(bad)), damaged)
        if failed:
            mngr.reload()
        return restored
    if not failed:
        return None
    tried = ", ".join(f"{step} ({error})" for step, error in failed)
    raise InputError(folder, f"no {what} restores (tried {tried}); they may be damaged or from a different config")


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
