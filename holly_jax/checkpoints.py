"""Checkpoints: an Orbax manager per phase folder, saving a state and restoring the newest one that restores.

Each phase keeps its checkpoints in its own folder (training in
``WORKDIR/checkpoints``, refinement in ``WORKDIR/refine/checkpoints``), at most
``train.max_to_keep`` of them. Saving is synchronous and Orbax writes a
checkpoint under a temporary name before renaming it, so a listed checkpoint
was complete when written. One that no longer restores (truncated or missing
files, say from a full disk) is reported in one line and moved aside to
``damaged/`` beside the folder, and the one before it is tried.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from holly_jax import faults
from holly_jax.errors import InputError


def manager(folder: Path, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The manager of ``folder/checkpoints``."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(cfg.train.max_to_keep),
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,  # what a killed save left half-written
    )
    return ocp.CheckpointManager((Path(folder) / "checkpoints").resolve(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save ``state`` as checkpoint ``step``; a failure (a full disk) leaves the earlier checkpoints as they
    were and is a one-line InputError."""
    kept = mngr.latest_step()
    faults.point("checkpoint")
    try:
        mngr.save(step, args=ocp.args.StandardSave(state))
    except Exception as e:  # OSError from Python, other types from the array store underneath
        for partial in Path(mngr.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        reason = " ".join(str(e).split())[:160]
        raise InputError(
            mngr.directory,
            f"cannot save checkpoint {step} ({e.__class__.__name__}: {reason}); the checkpoint of step {kept} is kept",
        ) from None


def restore_latest(mngr: ocp.CheckpointManager, template: Any, what: str = "checkpoint") -> Any | None:
    """The newest checkpoint that restores, shaped like ``template`` (a state or its ``jax.eval_shape``), or
    None without any; if none of several restores, a one-line InputError naming the folder."""
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return None
    problems = []
    for step in steps:
        with _quiet("asyncio"):  # a failed read also logs each failed array's traceback: our one line says it
            try:
                return mngr.restore(step, args=ocp.args.StandardRestore(template))
            except Exception as e:  # orbax raises many types for a damaged or mismatched checkpoint
                error = e.__class__.__name__
            gc.collect()  # the failed reads' futures are collected (and would log) now, while quiet
        problems.append(f"{step} ({error})")
        damaged = Path(mngr.directory).parent / "damaged" / str(step)
        print(
            f"warning: {what} {Path(mngr.directory) / str(step)} does not restore ({error}); moved to {damaged}",
            file=sys.stderr,
        )
        damaged.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.move(str(Path(mngr.directory) / str(step)), damaged)
        mngr.reload()
    raise InputError(
        mngr.directory,
        f"no {what} restores (tried {', '.join(problems)}); they may be damaged or from a different config",
    )


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
