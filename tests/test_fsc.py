"""Half-set FSC: the curve against closed forms (itself, white noise, known SNR, a Gaussian-blurred signal),
the resolution read off it, the halves' split, a halves run end to end (killed and resumed), bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from configs import tiny
from holly_jax import data, fsc, halfsets, pointfile
from holly_jax.errors import InputError
from holly_jax.setup import check_config

REPO = Path(__file__).resolve().parents[1]
N = 48


def white(seed, n=N):
    return np.random.default_rng(seed).normal(size=(n, n, n))


def test_fsc_of_a_volume_with_itself_is_one():
    c = fsc.curve(white(0), white(0))
    np.testing.assert_allclose(c.fsc, 1.0, atol=1e-12)
    assert c.voxels.sum() <= N**3 and c.voxels[0] == 1 and len(c.fsc) == N // 2 + 1


def test_fsc_of_independent_noise_stays_in_the_3_over_sqrt_n_band():
    c = fsc.curve(white(1), white(2))
    band = 3 / np.sqrt(c.voxels[1:])
    inside = np.abs(c.fsc[1:]) <= band
    assert inside.mean() >= 0.95 and np.abs(c.fsc[4:]).mean() < 0.05


def test_fsc_of_noisy_copies_is_snr_over_one_plus_snr():
    signal, snr = white(3), 0.6
    noise = 1 / np.sqrt(snr)
    c = fsc.curve(signal + noise * white(4), signal + noise * white(5))
    expected = snr / (1 + snr)
    shells = slice(4, None)  # enough coefficients per shell for the sampling error to be small
    err = (c.fsc[shells] - expected) * np.sqrt(c.voxels[shells])
    assert abs(np.mean(c.fsc[shells]) - expected) < 0.01 and np.abs(err).max() < 4.5


def test_gaussian_blur_moves_the_half_crossing_where_the_closed_form_says():
    """Signal of flat power P_s blurred by a Gaussian of width w (voxels), white noise of power P_n added
    to each half: FSC(k) = SNR(k) / (1 + SNR(k)), SNR(k) = P_s / P_n exp(-4 pi^2 w^2 k^2), so FSC = 0.5 at
    k = sqrt(ln(P_s / P_n)) / (2 pi w)."""
    n, ratio = 64, 400.0
    k = np.fft.fftfreq(n)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    for w, voxel in ((1.5, 1.0), (2.5, 0.5)):
        blur = np.exp(-2 * np.pi**2 * w**2 * k2)  # the Gaussian's transfer function (amplitude)
        signal = np.fft.ifftn(np.fft.fftn(white(6, n) * np.sqrt(ratio)) * blur).real
        c = fsc.curve(signal + white(7, n), signal + white(8, n), voxel)
        k_half = np.sqrt(np.log(ratio)) / (2 * np.pi * w)  # cycles per voxel
        res = fsc.resolution(c, 0.5)
        assert not res.at_nyquist
        assert res.value == pytest.approx(voxel / k_half, rel=0.04)


def test_resolution_interpolates_and_marks_a_curve_that_never_falls():
    c = fsc.Curve(np.array([0.0, 0.1, 0.2, 0.3]), np.array([1.0, 0.8, 0.4, 0.1]), np.ones(4))
    assert fsc.resolution(c, 0.5).value == pytest.approx(1 / 0.175)  # 0.8 -> 0.4 crosses 0.5 at 0.175
    top = fsc.resolution(c._replace(fsc=np.ones(4)), 0.143)
    assert top.at_nyquist and top.value == pytest.approx(1 / 0.3)


def test_soft_mask():
    m = fsc.soft_mask(32, 8.0, 2.0)
    c = np.abs(np.arange(32) - 15.5)
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    assert ((m >= 0) & (m <= 1)).all()
    np.testing.assert_allclose(m[r < 3], 1.0, atol=1e-3)
    np.testing.assert_allclose(m[r > 14], 0.0, atol=1e-3)
    np.testing.assert_allclose(m[np.abs(r - 8.0) < 0.05], 0.5, atol=0.02)
    assert np.all(np.diff(m[16, 16, 16:]) <= 0)  # falls outwards


def test_independent_clouds_do_not_correlate_at_high_frequency(tmp_path):
    """Volumes drawn too wide would leave the top shells to rounding noise, which the two halves share
    through the mask; drawn one voxel wide, two unrelated clouds stay in the noise band to Nyquist."""
    rng = np.random.default_rng(0)

    def ball(n):
        p = rng.normal(size=(n, 3))
        return p / np.linalg.norm(p, axis=1, keepdims=True) * rng.uniform(0, 1, (n, 1)) ** (1 / 3)

    results = halfsets.compare(tmp_path, ball(300), ball(300), sigma=0.1, voxel=0.03, nm_per_unit=None)
    curve = np.asarray(results["curve"]["fsc"])
    assert np.abs(curve[len(curve) // 4 :]).mean() < 0.05
    assert not results["resolution_0.143_at_nyquist"] and results["unit"] == "object units"


def test_halves_are_disjoint_cover_and_follow_the_seed():
    cfg = tiny.get_config()
    train = np.arange(100, 164)
    got = {}
    for half in (1, 2):
        cfg.halves.half = half
        got[half] = data.half_of(cfg, train, 8)
    assert len(got[1]) == len(got[2]) == 32 and not set(got[1]) & set(got[2])
    assert set(got[1]) | set(got[2]) == set(train)
    cfg.halves.half = 1
    assert np.array_equal(data.half_of(cfg, train, 8), got[1])
    cfg.seed = 7
    assert not np.array_equal(data.half_of(cfg, train, 8), got[1])
    # augmented copies of one base item stay in one half
    cfg.halves.half = 2
    aug = data.half_of(cfg, np.arange(40 * 3), 6, num_aug=3, whole_batches=True)
    assert len(aug) % 6 == 0 and all(set(aug[aug // 3 == b]) == {3 * b, 3 * b + 1, 3 * b + 2} for b in set(aug // 3))


def test_bad_input():
    cfg = tiny.get_config()
    cfg.halves.half = 1
    with pytest.raises(InputError, match="too few to split into halves"):
        data.half_of(cfg, np.arange(20), 16)
    cfg.halves.voxel = -1.0
    with pytest.raises(InputError, match="config.halves.voxel must be a number of at least 0"):
        check_config(cfg)


def test_compare_two_noisy_copies(tmp_path):
    truth = pointfile.read_points(REPO / "objs" / "asymmetric.obj").astype(np.float64)
    rng = np.random.default_rng(0)
    a = truth + rng.normal(0, 0.02, truth.shape)
    turn = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    b = (truth + rng.normal(0, 0.02, truth.shape)) @ turn.T * [1, 1, -1] + 0.3  # turned, mirrored, moved
    results = halfsets.compare(tmp_path, a, b, sigma=0.05, voxel=0.025, nm_per_unit=40.0, truth=truth)
    assert results["unit"] == "nm" and results["halves_mirrored"]
    assert results["halves_chamfer"] < 0.05 * 40
    # two copies 0.02 apart (x sqrt 2) agree far below the shape's size
    assert 0 < results["resolution_0.143"] < 0.5 * 40 and results["truth_resolution_0.5"] < 0.5 * 40
    for name in ("half_A", "half_B", "average"):
        with mrcfile.open(tmp_path / f"{name}.mrc") as mrc:
            assert mrc.voxel_size.x == pytest.approx(results["voxel"] * 10)  # nm to Ångström
    assert json.loads((tmp_path / "fsc.json").read_text())["grid"] == results["grid"]
    assert (tmp_path / "fsc.png").stat().st_size > 1000
    # a different structure as half B: the curve falls early
    other = rng.uniform(-1.5, 1.5, truth.shape)
    worse = halfsets.compare(tmp_path / "other", a, other, sigma=0.05, voxel=0.025, nm_per_unit=40.0)
    assert worse["resolution_0.143"] > 2 * results["resolution_0.143"]


def _halves(workdir, env=None):
    cmd = [sys.executable, str(REPO / "launch.py"), "--mode=halves", "--config=configs/tiny.py"]
    cmd += [f"--workdir={workdir}", "--config.train.epochs=2", "--config.data.train_size=96"]
    cmd += ["--config.train.save_every=8", "--config.halves.voxel=0.05"]
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )


def test_halves_run_killed_resumes(tmp_path):
    """Killed in half B's training, the rerun finds half A done, resumes half B from its checkpoint and
    compares them (a resumed fit ending as an uninterrupted one is tests/test_faults.py's)."""
    run = tmp_path / "run"
    killed = _halves(run, env={"HOLLY_KILL_AT": "training_step:22"})  # 12 steps per half: half B step 10
    assert killed.returncode != 0 and (run / "half_A" / "final.ply").exists()
    assert not (run / "half_B" / "final.ply").exists() and not (run / "eval" / "fsc.json").exists()
    resumed = _halves(run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = resumed.stdout + resumed.stderr
    assert "12 steps in all, resuming at step 12" in out  # half A: nothing left to train
    assert "12 steps in all, resuming at step 8" in out  # half B: from its checkpoint at 8
    a = pointfile.read_points(run / "half_A" / "final.ply")
    b = pointfile.read_points(run / "half_B" / "final.ply")
    assert not np.allclose(a, b)  # independent starts and data
    got = json.loads((run / "eval" / "fsc.json").read_text())
    assert got["resolution_0.143"] > 0 and "truth_resolution_0.5" in got and got["unit"] == "object units"
    assert got["voxel"] == pytest.approx(0.05)  # halves.voxel, in object units without a scale
    assert "eval/fsc.png" in (run / "report.html").read_text()
