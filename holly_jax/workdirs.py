"""What a finished (or interrupted) run's workdir holds: its saved config and its latest states.

Evaluation, inference and sweeps read runs back through ``load``; a saved
config is laid over today's defaults, so runs from before a field existed
still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

from configs import default
from holly_jax import checkpoints, refine, train
from holly_jax.errors import InputError
from holly_jax.setup import Setup, create_setup


class Saved(NamedTuple):
    setup: Setup
    state: train.TrainState  # the latest training checkpoint
    refined: refine.RefineState | None  # the latest refinement checkpoint, if the run refines and has one


def with_defaults(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """A saved config over today's defaults."""

    def merge(base: dict, over: dict) -> dict:
        return {
            **base,
            **{
                k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                for k, v in over.items()
            },
        }

    return ml_collections.ConfigDict(merge(default.get_config().to_dict(), saved))


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
    config_path = Path(workdir) / "config.json"
    if not config_path.exists():
        raise InputError(config_path, "not found: is this a holly-jax workdir?")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(config_path, f"not a readable config ({e.__class__.__name__})") from None
    return with_defaults(saved)


def load(workdir: str | Path) -> Saved:
    """The run a workdir holds: its setup, its latest training checkpoint and its latest refinement."""
    workdir = Path(workdir)
    setup = create_setup(read_config(workdir))
    mngr = checkpoints.manager(workdir, setup.cfg)
    if mngr.latest_step() is None:
        raise InputError(workdir / "checkpoints", "no checkpoint to evaluate")
    state = train.restore_or_init(setup, mngr, workdir)
    return Saved(setup, state, refine.load(workdir, setup, state))
