"""The loop driver: periodic report and save at the right steps, metric means, resume, the divergence stop."""

import jax.numpy as jnp
import numpy as np
import pytest

from holly_jax import loop
from holly_jax.errors import InputError


def _step(state, batch):
    """A state that counts steps; the metric is the batch's value, so means are easy to check."""
    return state + 1, {"train_loss": jnp.float32(batch), "other": jnp.float32(2 * batch)}


def _drive(total, start, log_every, save_every, losses):
    reports, saves = [], []

    def report(done, means, rate, state):
        assert rate > 0
        reports.append((done, means, int(state)))
        return {"train_loss": means["train_loss"]}

    spec = loop.Loop("training", total, 4, log_every, save_every)
    final = loop.drive(
        spec,
        jnp.int32(start),
        start,
        _step,
        iter(losses[start:]),
        report,
        lambda done, state: saves.append((done, int(state))),
        primary=False,
    )
    return int(final), reports, saves


def test_actions_run_at_their_intervals_and_at_the_last_step():
    losses = [float(i) for i in range(7)]
    final, reports, saves = _drive(7, 0, 3, 4, losses)
    assert final == 7
    assert [(done, state) for done, _, state in reports] == [(3, 3), (6, 6), (7, 7)]
    assert saves == [(4, 4), (7, 7)]
    # the means of the steps since the last report
    assert [r[1]["train_loss"] for r in reports] == pytest.approx([np.mean([0, 1, 2]), np.mean([3, 4, 5]), 6.0])
    assert reports[0][1]["other"] == pytest.approx(2.0)


def test_a_resumed_loop_starts_at_its_step():
    final, reports, saves = _drive(7, 5, 3, 4, [float(i) for i in range(7)])
    assert final == 7 and [r[0] for r in reports] == [6, 7] and saves == [(7, 7)]
    assert reports[0][1]["train_loss"] == pytest.approx(5.0)  # only step 6 (item 5) since the resume


def test_a_non_finite_loss_stops_with_one_line_naming_the_last_checkpoint():
    losses = [1.0, 1.0, 1.0, 1.0, float("nan"), 1.0]
    with pytest.raises(InputError) as info:
        _drive(6, 0, 5, 2, losses)
    message = str(info.value)
    assert "training diverged" in message and "step 5" in message and "(step 4) is kept" in message
    assert "\n" not in message
