"""One tiny trained run: its outputs, pictures, evaluation and report, and the evaluate, infer and render
modes on it."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from holly_jax import fits, forward, pipeline, pointfile, workdirs

REPO = Path(__file__).resolve().parents[1]
OBJ = REPO / "objs" / "asymmetric.obj"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny.get_config()
    cfg.data.object = str(OBJ)
    pipeline.train_and_evaluate(cfg, workdir)  # ends with evaluation and report.html
    return workdir


def _launch(*args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_training_writes_pictures_report_and_evaluation(run_dir):
    for name in ("curves", "pairs", "cloud"):
        assert Image.open(run_dir / "pictures" / f"{name}.png").size[0] > 100
    # pairs: 8 test items, 4 per row, input|output at 32 px enlarged 4x
    w, h = Image.open(run_dir / "pictures" / "pairs.png").size
    assert (w, h) == (4 * (2 * 32 + 2) * 4 + 3 * 4 * 4, 2 * 32 * 4 + 4 * 4)
    results = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for key in ("chamfer", "hausdorff", "rotation_error_median_deg", "rotation_under_10deg", "heldout_loss"):
        assert isinstance(results[key], float)
    assert results["heldout_images"] == 8 and results["step"] == 32
    assert results["symmetry"] == "C1" and results["symmetry_order"] == 1  # the asymmetric shape
    assert results["rotation_mirrored"] == results["cloud_mirrored"]  # one alignment for cloud and poses
    rows = list(csv.DictReader((run_dir / "eval" / "poses.csv").open()))
    heldout = [r for r in rows if r["split"] == "heldout"]
    assert len(heldout) == 8 and len([r for r in rows if r["split"] == "train"]) == results["train_images"]
    median = np.median([float(r["error_deg"]) for r in heldout])
    assert median == pytest.approx(results["rotation_error_median_deg"], abs=1e-3)  # the table gives the figures
    q = np.array([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in heldout])
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    aligned = pointfile.read_points(run_dir / "eval" / "aligned.ply")
    assert aligned.shape == (60, 3)
    assert pointfile.read_points(run_dir / "eval" / "truth.ply").shape == pointfile.read_points(OBJ).shape
    gif = Image.open(run_dir / "eval" / "animation.gif")
    assert gif.n_frames == 23 * 6 and gif.size == ((2 * 32 + 2) * 4, 32 * 4)
    report = (run_dir / "report.html").read_text()
    for rel in ("pictures/curves.png", "eval/cloud.png", "eval/animation.gif", "chamfer"):
        assert rel in report
    assert "tb" in os.listdir(run_dir) and list((run_dir / "tb").glob("events.*"))


def test_training_outputs_exist_and_parse(run_dir):
    _, state, _ = workdirs.load(run_dir)
    learned = np.asarray(state.params["points"])
    assert int(state.step) == 32
    for name in ("initial.ply", "initial.obj", "final.ply", "final.obj"):
        assert pointfile.read_points(run_dir / name).shape == (60, 3)
    np.testing.assert_allclose(pointfile.read_points(run_dir / "final.ply"), learned, atol=1e-5)
    assert not np.allclose(pointfile.read_points(run_dir / "initial.ply"), learned, atol=1e-3)  # points moved
    # save_every 16 with 8 steps per epoch: steps 16 (epoch 1) and 32 (epoch 3)
    assert sorted(p.name for p in (run_dir / "plys").iterdir()) == ["shape_e1_s16.ply", "shape_e3_s32.ply"]
    assert sorted(p.name for p in (run_dir / "objs").iterdir()) == ["shape_e1_s16.obj", "shape_e3_s32.obj"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [8, 16, 24, 32]
    for key in ("train_loss", "test_loss", "sigma_in", "sigma_out", "lr", "plr", "images_per_s", "epoch"):
        assert all(key in r and r[key] is not None for r in records), key
    assert records[0]["sigma_in"] > records[-1]["sigma_in"]  # the schedule moves 3 -> 1.5
    assert records[0]["plr"] == pytest.approx(4e-3) and records[0]["lr"] == pytest.approx(4e-4)
    assert json.loads((run_dir / "config.json").read_text())["train"]["batch_size"] == 8
    assert not list(run_dir.rglob("*.tmp"))
    # a run without data.pixel_nm writes no files in nm (tests/test_exports.py: a run with it does)
    assert json.loads((run_dir / "scale.json").read_text())["nm_per_unit"] is None
    assert not (run_dir / "final_nm.ply").exists() and not (run_dir / "final.mrc").exists()


def test_evaluate_mode_with_given_poses(run_dir):
    rc, out, err = _launch(
        "--mode=evaluate", f"--workdir={run_dir}", f"--truth={OBJ}", "--pose=euler:10,20,30", "--pose=quat:1,0,0,0"
    )
    assert rc == 0, err
    assert "chamfer" in out and "rotation_error_median_deg" in out
    results = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert [p["pose"] for p in results["poses"]] == ["euler:10,20,30", "quat:1,0,0,0"]
    w, h = Image.open(run_dir / "eval" / "poses.png").size
    assert h == 32 * 4  # one row of two pairs


def test_render_then_infer(run_dir, tmp_path):
    images = tmp_path / "images"
    for i, pose in enumerate(["euler:0,0,0", "euler:40,10,-30"]):
        rc, out, err = _launch(
            "--mode=render",
            f"--object={OBJ}",
            f"--pose={pose}",
            "--sigma=1.5",
            "--size=32",
            f"--output={images / f'im{i}.fits'}",
        )
        assert rc == 0, err
    assert fits.read_image(images / "im0.fits").shape == (32, 32)
    rc, out, err = _launch("--mode=infer", f"--workdir={run_dir}", f"--input={images}", f"--output={tmp_path / 'o'}")
    assert rc == 0, err
    results = json.loads((tmp_path / "o" / "infer.json").read_text())
    assert [Path(r["file"]).name for r in results] == ["im0.fits", "im1.fits"]
    for r in results:
        assert len(r["quaternion_wxyz"]) == 4 and r["sigma"] > 0 and np.isfinite(r["loss"])
    guess = fits.read_image(tmp_path / "o" / "im1_guess.fits")
    assert guess.shape == (32, 32) and guess.sum() > 0
    assert Image.open(tmp_path / "o" / "im1.png").size == ((2 * 32 + 2) * 4, 32 * 4)
    # the loss infer reports is the loss of the guess against the input
    setup, state, _ = workdirs.load(run_dir)
    pred = forward.Predictor(setup, state)(np.stack([fits.read_image(images / "im1.fits")]), forward.final_sigma(setup))
    assert results[1]["loss"] == pytest.approx(float(pred.loss_B[0]), rel=1e-5)


def test_render_mode_closed_forms(tmp_path):
    n = len(pointfile.read_points(OBJ))
    rc, _, err = _launch(
        "--mode=render", f"--object={OBJ}", "--sigma=2", "--size=128", f"--output={tmp_path / 'a.fits'}"
    )
    assert rc == 0, err
    image = fits.read_image(tmp_path / "a.fits")
    assert image.shape == (128, 128)
    assert image.sum() == pytest.approx(n, rel=0.01)  # each point's Gaussian sums to 1 inside the frame
    rc, _, err = _launch(
        "--mode=render", f"--object={OBJ}", "--normalise", "--size=64x48", f"--output={tmp_path / 'b'}"
    )
    assert rc == 0, err
    image = fits.read_image(tmp_path / "b.fits")
    assert image.shape == (64, 48) and image.sum() == pytest.approx(100.0, rel=1e-4)
    assert Image.open(tmp_path / "b.png").size == (48, 64)


@pytest.mark.parametrize("case", ["no_checkpoint", "no_truth", "wrong_size", "no_workdir", "bad_pose"])
def test_mode_errors_are_one_line(run_dir, tmp_path, case):
    if case == "no_checkpoint":
        (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
        args, problem = ["--mode=evaluate", f"--workdir={tmp_path}"], "no checkpoint to evaluate"
    elif case == "no_truth":
        args, problem = ["--mode=evaluate", f"--workdir={run_dir}", "--truth=/nope/gt.ply"], "gt.ply: file not found"
    elif case == "wrong_size":
        fits.write_image(tmp_path / "big.fits", np.ones((64, 64)))
        args, problem = ["--mode=infer", f"--workdir={run_dir}", f"--input={tmp_path / 'big.fits'}"], "64x64"
    elif case == "no_workdir":
        args, problem = ["--mode=evaluate", f"--workdir={tmp_path / 'none'}"], "config.json: not found"
    else:
        args, problem = ["--mode=render", f"--object={OBJ}", "--pose=euler:1,2", f"--output={tmp_path / 'x'}"], "pose"
    rc, out, err = _launch(*args)
    assert rc != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and problem in err, err
    assert "Traceback" not in out + err


def test_evaluation_images_equal_one_whole_batch_and_compile_once():
    """``evaluate.images_of`` draws its items in padded chunks of one shape: the same images as drawing every
    item in one call, and one compiled program however many items and calls."""
    import jax.numpy as jnp

    from holly_jax import data, evaluate
    from holly_jax.setup import create_setup

    cfg = tiny.get_config()
    cfg.data.object = str(OBJ)
    setup = create_setup(cfg)
    idx = np.arange(3, 3 + evaluate.IMAGES_CHUNK + 6)  # a chunk and a part
    whole = np.asarray(data.targets(setup.ds, setup.ds.arrays, jnp.asarray(idx), jnp.float32(1.5), jnp.int32(0)))
    targets, R = evaluate.images_of(setup, idx, 1.5)
    np.testing.assert_allclose(targets, whole, rtol=1e-5, atol=1e-6)
    assert targets.shape == (len(idx), *setup.ds.size) and R.shape == (len(idx), 3, 3)
    evaluate.images_of(setup, idx[:5], 1.0)
    assert evaluate._targets_of(setup.ds)._cache_size() == 1
