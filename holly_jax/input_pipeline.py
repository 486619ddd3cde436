"""The input pipeline: each epoch's shuffled order, what a step takes for its items, and batches made ahead.

An epoch's order is a function of (seed, salt, epoch) only, so a resumed run
sees the same batches as an uninterrupted one. A step takes item indices
(simulated items, localisation particles: the targets are drawn on the device)
or, for a FITS data set, the images themselves, from the folder of the
schedule's entry at that step. Batches are gathered on a background thread a
few steps ahead and placed on the devices, split along the mesh's data axis.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np

from holly_jax import salts
from holly_jax.setup import Setup


def shuffled(seed: int, salt: int, n: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) for one epoch of one stream."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), salt), epoch)
    return np.asarray(jax.random.permutation(key, n))


def epoch_order(setup: Setup, epoch: int) -> np.ndarray:
    """The training items of one epoch in their shuffled order."""
    train_idx = setup.ds.splits["train"]
    return train_idx[shuffled(setup.cfg.seed, salts.EPOCH_ORDER, len(train_idx), epoch)]


def schedule_entry(setup: Setup, step: int) -> int:
    """The index of the sigma-list entry the stepped schedule takes at ``step`` (as schedule.sigma_at)."""
    last = int(setup.ds.arrays.sigmas_S.shape[0]) - 1
    total = max(setup.total_steps, 1)
    return min((min(max(step, 0), total) * last) // total, last)


def host_batch(setup: Setup, items: np.ndarray, step: int) -> np.ndarray:
    """What a step takes for these items at this step: the indices, or the FITS images themselves."""
    if setup.ds.source != "fits":
        return np.asarray(items, np.int32)
    return np.asarray(setup.ds.fits_images.images_for_entry(schedule_entry(setup, step))[np.asarray(items)])


def batches(
    order: Callable[[int], np.ndarray],
    steps_per_epoch: int,
    batch_size: int,
    start: int,
    stop: int,
    make: Callable[[np.ndarray, int], Any],
    prefetch: int = 2,
) -> Iterator[Any]:
    """``make(positions, step)`` for steps start .. stop - 1, where ``positions`` is the step's slice of its
    epoch's ``order(epoch)``; made on a background thread, ``prefetch`` steps ahead."""

    def produce():
        current, current_epoch = None, -1
        for step in range(start, stop):
            epoch = step // steps_per_epoch
            if epoch != current_epoch:
                current, current_epoch = order(epoch), epoch
            yield make(current[(step % steps_per_epoch) * batch_size :][:batch_size], step)

    return prefetched(produce(), prefetch)


def train_batches(setup: Setup, start: int) -> Iterator[jax.Array]:
    """Device batches for training steps start, start + 1, ..."""

    def make(items, step):
        return setup.split(host_batch(setup, items, step))

    return batches(
        lambda epoch: epoch_order(setup, epoch), setup.steps_per_epoch, setup.batch_size, start, setup.total_steps, make
    )


def prefetched(iterator: Iterator, depth: int) -> Iterator:
    """Run an iterator on a daemon thread, ``depth`` items ahead; its exceptions surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in iterator:
                q.put(item)
            q.put(done)
        except BaseException as e:  # hand the error to the consumer
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
