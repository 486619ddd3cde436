"""Training on tiny configs: the loss falls, pose-only and predicted-sigma modes, the learning-rate schedules,
bad input in one line (a tiny run's outputs: tests/test_evaluate.py; killed runs: tests/test_faults.py)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holly_jax import checkpoints, loop, optim, pipeline, plots, pointfile, train
from holly_jax.errors import InputError
from holly_jax.setup import create_setup

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides):
    cfg = tiny.get_config()
    cfg.data.object = str(REPO / "objs" / "asymmetric.obj")
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def _launch(workdir, *overrides, config="configs/tiny.py"):
    cmd = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={REPO / config}",
        f"--workdir={workdir}",
        f"--config.data.object={REPO / 'objs' / 'asymmetric.obj'}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def _final_state(cfg, workdir):
    setup = create_setup(cfg)
    return train.restore_or_init(setup, checkpoints.manager(Path(workdir), cfg), Path(workdir))


def test_training_loss_falls_at_constant_sigma(tmp_path, monkeypatch):
    cfg = _config(**{"sigma.list": "3.0", "train.epochs": 6, "train.log_every": 8, "optim.plr": 2e-2})
    drawn, draw = [], plots.save_cloud_views

    def save_cloud_views(path, points, *args, **kwargs):  # which thread draws each save's pictures
        drawn.append((threading.current_thread().name, kwargs.get("title")))
        draw(path, points, *args, **kwargs)

    monkeypatch.setattr(plots, "save_cloud_views", save_cloud_views)
    pipeline.fit(cfg, tmp_path)  # the training alone: the evaluation is tested elsewhere
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(8, 49, 8))
    first, last = records[0], records[-1]
    assert last["train_loss"] < 0.9 * first["train_loss"]
    assert last["test_loss"] < first["test_loss"]
    # each save's files written on the recorder's thread, all of them there once the run returns
    assert [title for _, title in drawn] == ["step 16", "step 32", "step 48"]
    assert all(name.startswith("holly-writer") for name, _ in drawn)
    assert sorted(p.name for p in (tmp_path / "plys").glob("shape_*.ply")) == [
        f"shape_e{e}_s{s}.ply" for e, s in ((1, 16), (3, 32), (5, 48))
    ]
    assert (tmp_path / "pictures" / "pairs.png").stat().st_size > 0


def test_a_run_stopped_at_a_save_ends_with_that_saves_files_written(tmp_path, monkeypatch):
    # a stop signal at the first step: the loop saves, then stops with one line; the save's point files and
    # pictures, written on the Recorder's thread, are all there when the error reaches the caller
    monkeypatch.setattr(loop, "preempted", lambda: True)
    with pytest.raises(InputError) as info:
        pipeline.fit(_config(**{"train.epochs": 1}), tmp_path)
    assert "stopped at step 1 on a stop signal" in str(info.value)
    assert (tmp_path / "plys" / "shape_e0_s1.ply").stat().st_size > 0
    assert (tmp_path / "objs" / "shape_e0_s1.obj").stat().st_size > 0
    assert all((tmp_path / "pictures" / f"{name}.png").stat().st_size > 0 for name in ("curves", "pairs", "cloud"))


def test_pose_only_mode_keeps_points_fixed(tmp_path):
    fixed = REPO / "objs" / "asymmetric.ply"
    cfg = _config(**{"points.fixed": str(fixed), "train.epochs": 1})
    state = pipeline.train_and_evaluate(cfg, tmp_path)
    np.testing.assert_array_equal(np.asarray(state.params["points"]), pointfile.read_points(fixed))


def test_predicted_sigma_is_used(tmp_path):
    cfg = _config(**{"model.predict_sigma": True, "train.epochs": 1})
    pipeline.fit(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["sigma_out"] != pytest.approx(records[-1]["sigma_in"])  # the network's own sigma


def test_adapt_reduces_both_rates_when_point_movement_plateaus():
    cfg = _config(**{"optim.adapt": True, "optim.pinterval": 5, "optim.adapt_patience": 2})
    a = optim.AdaptState(jnp.float32(1.0), jnp.zeros((4, 3)), jnp.float32(jnp.inf), jnp.int32(0))
    position = 0.0
    scales = []
    # movement per check: shrinking for 3 checks (settling), then constant (a plateau)
    for check, move in enumerate([0.5, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]):
        for step in range(5 * check + 1, 5 * check + 6):
            if step % 5 == 0:
                position += move
            a = optim.adapt_update(a, jnp.full((4, 3), position / np.sqrt(3)), jnp.int32(step), cfg)
        scales.append(float(a.scale))
    # checks 4, 5 do not improve (bad 1, 2); check 6 makes bad 3 > patience 2: scale x0.75
    assert scales == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.75, 0.75])
    assert float(a.best) == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize(
    "overrides,problem",
    [
        (["--config.data.object=/nonexistent/shape.obj"], "shape.obj: file not found"),
        (["--config.data.object={empty}"], "empty.obj: no vertices"),
        (["--config.train.bogus=1"], "unknown config field 'config.train.bogus'"),
        (["--config.train.batch_size=7"], "batch size 7 does not divide the 64 training images"),
        (["--config.data.test_size=100"], "test set (100 images) is larger than the training data (64)"),
        (["--config.sigma.list=3,0,1"], "sigma entry 2 must be positive"),
        (["--config.sigma.file={bad_sigma}"], "bad_sigma.csv: sigma entry 1 must be positive"),
        (["--config.refine.lr=0"], "config.refine.lr must be positive, got 0"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, overrides, problem):
    (tmp_path / "empty.obj").write_text("# nothing here\nf 1 2 3\n")
    (tmp_path / "bad_sigma.csv").write_text("-1,2\n")
    overrides = [o.format(empty=tmp_path / "empty.obj", bad_sigma=tmp_path / "bad_sigma.csv") for o in overrides]
    proc = _launch(tmp_path / "run", *overrides)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and problem in err, err
    assert "Traceback" not in err + out
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_config_variant_is_one_line_error(tmp_path):
    proc = _launch(tmp_path / "run", config="configs/quick.py:nope")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.count("\n") == 1 and "quick.py: unknown quick variant 'nope'" in err, err
    assert "Traceback" not in err + out


def test_learning_rate_decay_falls_linearly_over_the_last_fraction():
    cfg = _config(**{"optim.lr": 1e-3, "optim.plr": 1e-2, "optim.decay_fraction": 0.25})
    lr, plr = optim.learning_rates(cfg, 100)
    assert [float(lr(s)) for s in (0, 74, 75)] == pytest.approx([1e-3, 1e-3, 1e-3])
    assert float(lr(85)) == pytest.approx(1e-3 * 0.6) and float(plr(85)) == pytest.approx(1e-2 * 0.6)
    assert float(plr(100)) == pytest.approx(0.0, abs=1e-12)
    cfg.optim.decay_fraction = 0.0
    assert float(optim.learning_rates(cfg, 100)[1](99)) == pytest.approx(1e-2)
