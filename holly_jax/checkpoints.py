"""Checkpoints: an Orbax manager per phase folder, saving a state and restoring the latest one.

Each phase keeps its checkpoints in its own folder (training in
``WORKDIR/checkpoints``, refinement in ``WORKDIR/refine/checkpoints``), at most
``train.max_to_keep`` of them. Saving is synchronous, so a checkpoint that is
listed is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from holly_jax.errors import InputError


def manager(folder: Path, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The manager of ``folder/checkpoints``."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(cfg.train.max_to_keep), create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((Path(folder) / "checkpoints").resolve(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    mngr.save(step, args=ocp.args.StandardSave(state))


def restore_latest(mngr: ocp.CheckpointManager, template: Any, what: str = "checkpoint") -> Any | None:
    """The manager's latest state, shaped like ``template`` (a state or its ``jax.eval_shape``), or None
    without one; a checkpoint that does not restore is a one-line InputError naming its folder."""
    latest = mngr.latest_step()
    if latest is None:
        return None
    try:
        return mngr.restore(latest, args=ocp.args.StandardRestore(template))
    except Exception as e:  # orbax raises many types for a damaged or mismatched checkpoint
        raise InputError(
            Path(mngr.directory) / str(latest),
            f"cannot restore {what} ({e.__class__.__name__}); it may be damaged or from a different config",
        ) from None
