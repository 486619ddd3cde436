"""A run's workdir: its saved config and latest states, the lock a live run holds, the resume check.

Evaluation, inference and sweeps read runs back through ``load``; a saved
config is laid over today's defaults, so runs from before a field existed
still load. A run that writes into a workdir holds ``WORKDIR/.lock`` (an
advisory ``flock``, which the kernel drops when the process ends, however it
ends), so a second run on the same workdir refuses at once. Resuming checks
that the config asks for the same run: only the fields in ``SAFE_ON_RESUME``
may change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple

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


def load(workdir: str | Path, refined: bool = True) -> Saved:
    """The run a workdir holds: its setup, its latest training checkpoint and (``refined``) its latest
    refinement; read-only: a damaged checkpoint is skipped, not moved."""
    workdir = Path(workdir)
    setup = create_setup(read_config(workdir))
    mngr = checkpoints.manager(workdir, setup.cfg)
    if mngr.latest_step() is None:
        raise InputError(workdir / "checkpoints", "no checkpoint to evaluate")
    state = train.restore_or_init(setup, mngr, workdir, move_damaged=False)
    return Saved(setup, state, refine.load(workdir, setup, state, move_damaged=False) if refined else None)


# Fields a resumed run may change: how long it runs and how often it logs, saves and reports.
SAFE_ON_RESUME = (
    "train.epochs",
    "train.steps",
    "train.log_every",
    "train.save_every",
    "train.max_to_keep",
    "train.report",
    "refine.steps",
)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def check_resume(workdir: str | Path, cfg: ml_collections.ConfigDict) -> None:
    """A one-line InputError when ``cfg`` differs from the config the run in ``workdir`` was started with in
    a field that changes the run (anything but ``SAFE_ON_RESUME``), listing each field and both values."""
    saved = _flat(read_config(workdir).to_dict())
    asked = _flat(json.loads(json.dumps(cfg.to_dict())))
    differ = [k for k in sorted(set(saved) | set(asked)) if k not in SAFE_ON_RESUME and saved.get(k) != asked.get(k)]
    if differ:
        changes = "; ".join(f"{k}: {saved.get(k)!r} -> {asked.get(k)!r}" for k in differ)
        raise InputError(
            Path(workdir),
            f"holds a run with a different config ({changes}); resume with its config (only "
            f"{', '.join(SAFE_ON_RESUME)} may change) or use another --workdir",
        )


@contextlib.contextmanager
def locked(workdir: str | Path, primary: bool = True, create: bool = True) -> Iterator[None]:
    """Hold ``WORKDIR/.lock`` while a run writes into the workdir (made if missing and ``create``); another
    live process holding it is a one-line InputError. Only the primary process locks."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise InputError(workdir, "exists and is not a folder: --workdir must name a folder")
    if not primary or not (create or workdir.exists()):
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise InputError(
                workdir, f"another run (process {holder}) is using this workdir; wait for it or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock
