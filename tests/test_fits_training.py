"""Training on FITS image sets: the real CEP152 fixture, one folder blurred on the device, one folder per sigma."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import tiny
from holly_jax import fits, input_pipeline, pipeline, train
from holly_jax.setup import create_setup

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "fixtures" / "cep152-fits"


def _fits_config(path, sigmas="3,1.5", size=32, **extra):
    cfg = tiny.get_config()
    cfg.data.source = "fits"
    cfg.data.path = str(path)
    cfg.data.image_height = cfg.data.image_width = size
    cfg.data.train_size = 0
    cfg.data.test_size = 4
    cfg.data.valid_size = 2
    cfg.sigma.list = sigmas
    cfg.train.batch_size = 4
    cfg.train.epochs = 2
    cfg.train.log_every = 2
    cfg.train.save_every = 4
    for k, v in extra.items():
        cfg.train[k] = v
    return cfg


def _images(folder, n, value, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.uniform(size=(size, size)).astype(np.float32) + value
        fits.write_image(Path(folder) / f"img{i:03d}.fits", image)


@pytest.mark.skipif(not SHARED.exists(), reason="shared CEP152 fixtures absent")
def test_real_cep152_images_train(tmp_path):
    cfg = _fits_config(SHARED, sigmas="2.0", size=128, report=True)
    cfg.sigma.interpolate = False
    cfg.data.test_size, cfg.data.valid_size = 2, 2
    cfg.train.batch_size = 2
    state = pipeline.train_and_evaluate(cfg, tmp_path)
    assert int(state.step) == 2 * 3  # 6 training images, batch 2, 2 epochs
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) for r in records)
    assert (tmp_path / "final.ply").exists() and (tmp_path / "report.html").exists()
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert results["truth"] is None and results["heldout_images"] == 2 and "chamfer" not in results


def test_single_folder_is_blurred_on_the_device_at_the_schedule_sigma(tmp_path):
    _images(tmp_path, 16, 0.0)
    cfg = _fits_config(tmp_path)
    setup = create_setup(cfg)
    assert setup.ds.fits_images.blur and setup.steps_per_epoch == 2  # 10 training images, batch 4: the remainder waits
    steps = train.make_steps(setup)
    state = train.create_state(setup, train.initial_points(setup))
    batch = input_pipeline.host_batch(setup, setup.ds.splits["test"][:4], 0)
    targets, _ = steps.sample(state, setup.ds.arrays, batch)
    from scipy.ndimage import gaussian_filter

    want = gaussian_filter(np.asarray(batch[0], np.float64), 3.0, mode="constant", truncate=12)
    np.testing.assert_allclose(np.asarray(targets[0]), want, rtol=1e-4, atol=1e-6)
    state = pipeline.train_and_evaluate(cfg, tmp_path / "run")
    assert int(state.step) == 4


def test_sigma_folders_switch_as_the_schedule_moves(tmp_path):
    _images(tmp_path / "03", 16, 0.0, seed=1)
    _images(tmp_path / "1.5", 16, 5.0, seed=2)
    cfg = _fits_config(tmp_path, sigmas="3,1.5")
    cfg.sigma.interpolate = False
    setup = create_setup(cfg)
    assert not setup.ds.fits_images.blur
    items = setup.ds.splits["train"][:4]
    first, second = (
        np.stack([fits.read_image(tmp_path / d / f"img{i:03d}.fits") for i in items]) for d in ("03", "1.5")
    )
    assert setup.total_steps == 4
    np.testing.assert_array_equal(input_pipeline.host_batch(setup, items, 0), first)  # position 0 of the list: sigma 3
    np.testing.assert_array_equal(input_pipeline.host_batch(setup, items, 3), first)  # position 0.75: still entry 0
    np.testing.assert_array_equal(input_pipeline.host_batch(setup, items, 4), second)  # the end: sigma 1.5
    pipeline.train_and_evaluate(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sigma_in"] for r in records] == [3.0, 3.0]


def _launch(*args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "--config=configs/tiny.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", ["missing_sigma_folder", "empty_folder", "test_too_large", "one_bad_image"])
def test_fits_bad_input(tmp_path, case):
    data = tmp_path / "data"
    args = [
        "--config.data.source=fits",
        f"--config.data.path={data}",
        "--config.data.test_size=2",
        "--config.data.valid_size=0",
        "--config.train.batch_size=2",
        "--config.train.epochs=1",
        "--config.train.report=False",
        f"--workdir={tmp_path / 'run'}",
    ]
    if case == "missing_sigma_folder":
        _images(data / "3.0", 6, 0.0)
        args += ["--config.sigma.list=3,1.5", "--config.sigma.interpolate=False"]
        problem = "no folder for sigma 1.5 of the schedule (folders: 3.0)"
    elif case == "empty_folder":
        data.mkdir()
        (data / "notes.txt").write_text("x")
        problem = "folder has no FITS images"
    elif case == "test_too_large":
        _images(data, 4, 0.0)
        args.append("--config.data.test_size=4")
        problem = "leave nothing to train on out of 4"
    else:
        _images(data, 8, 0.0)
        (data / "img003.fits").write_bytes(b"garbage")
        rc, out, err = _launch(*args)
        assert rc == 0, err
        assert "img003.fits" in err and "1 image(s) were skipped" in out + err
        return
    rc, out, err = _launch(*args)
    assert rc != 0 and err.startswith("error: ") and err.count("\n") == 1 and problem in err, err
    assert "Traceback" not in out + err
