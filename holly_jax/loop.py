"""The loop driver every phase runs on: steps, a progress bar, metric means, logging, checkpoints, pictures.

A phase hands ``drive`` its jitted step, its batches and two periodic
actions: ``report`` every ``log_every`` steps (given the means of the metrics
since the last report, it writes the phase's record and returns it) and
``save`` every ``save_every`` steps (a checkpoint and point files; the phase
hands the pictures to the Recorder's writer thread); both also run at the last
step. The loop waits on the device only at those intervals; a non-finite loss
stops it with a one-line error, keeping the last checkpoint. The images/s it
reports exclude the time spent reporting (and saving, when a save falls on a
report's step). With several processes, a stop signal (SIGTERM, a scheduler's
preemption notice, which JAX's runtime catches) makes every process save at the
same step and stop with a one-line error.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from holly_jax import faults
from holly_jax.errors import InputError

_steps = itertools.count()  # this process's steps over every phase: the same sequence on every process


def preempted() -> bool:
    """With several processes: whether this step is the one at which every process saves and stops, after a
    stop signal reached any of them (JAX's preemption sync point); False with one process."""
    return jax.distributed.is_initialized() and multihost_utils.reached_preemption_sync_point(next(_steps))


class Loop(NamedTuple):
    name: str  # the phase ("training", "refinement"): the bar's label and the divergence message
    total: int  # the phase's last step
    batch_size: int  # images per step
    log_every: int
    save_every: int


def drive(
    loop: Loop,
    state: Any,
    start: int,
    step_fn: Callable,
    batches: Iterable,
    report: Callable[[int, dict[str, float], float, Any], dict[str, Any]],
    save: Callable[[int, Any], None],
    primary: bool = True,
) -> Any:
    """Run ``state, metrics = step_fn(state, batch)`` for steps start .. total - 1 and return the last state.

    ``report(done, means, images_per_s, state)`` and ``save(done, state)`` are the periodic actions; ``done``
    counts the steps finished. Only ``primary`` (process 0) shows a progress bar.
    """
    bar = tqdm(
        total=loop.total * loop.batch_size,
        initial=start * loop.batch_size,
        unit="img",
        unit_scale=True,
        dynamic_ncols=True,
        disable=None if primary else True,
        desc=loop.name,
    )
    saved = start or None  # the step of the newest checkpoint
    acc, n_acc, images, t_last = None, 0, 0, time.perf_counter()
    for step, batch in zip(range(start, loop.total), batches):
        state, metrics = step_fn(state, batch)
        faults.point(f"{loop.name}_step")
        acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
        n_acc, images = n_acc + 1, images + loop.batch_size
        bar.update(loop.batch_size)
        done = step + 1
        last = done == loop.total
        logging = done % loop.log_every == 0 or last
        if logging:
            jax.block_until_ready(acc)
            rate = images / (time.perf_counter() - t_last)
            means = {k: float(v) / n_acc for k, v in jax.device_get(acc).items()}
            if not np.isfinite(means["train_loss"]):
                kept = f"the last checkpoint (step {saved}) is kept" if saved else "no checkpoint was saved yet"
                raise InputError(
                    None, f"{loop.name} diverged: the loss is {means['train_loss']} at {loop.name} step {done}; {kept}"
                )
            record = report(done, means, rate, state)
            postfix = {"loss": f"{record['train_loss']:.4g}", "img_s": f"{rate:.0f}"}
            if "sigma_in" in record:
                postfix["sigma"] = f"{record['sigma_in']:.3g}"
            bar.set_postfix(postfix)
            acc, n_acc, images = None, 0, 0
        stop = preempted()
        if done % loop.save_every == 0 or last or stop:
            save(done, state)
            saved = done
        if stop:
            raise InputError(
                None,
                f"{loop.name} stopped at step {done} on a stop signal (SIGTERM), its checkpoint saved; "
                "start every process again with the same command to resume",
            )
        if logging:
            t_last = time.perf_counter()  # the rate excludes reporting and saving
    bar.close()
    return state
