"""Localisation tables: the simulator's statistics, both formats, particles, bad input, training on them."""

import json
import re
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holly_jax import data, locs, pipeline, pointfile
from holly_jax.errors import InputError

REPO = Path(__file__).resolve().parents[1]
GT = pointfile.read_points(REPO / "objs" / "nuclear_pore.obj")


@pytest.fixture(scope="module")
def sim():
    return locs.simulate(GT, 400, seed=0, labelling=0.7, blinks=3.0, precision_nm=9.0, background=6.0)


def test_simulator_statistics(sim):
    signal = ~sim.is_background
    per_particle = np.bincount(sim.locs.group[signal], minlength=400)
    # each of the N points: labelled (0.7) times Poisson(3) blinks
    expected = len(GT) * 0.7 * 3.0
    assert abs(per_particle.mean() - expected) < 4 * np.sqrt(len(GT) * 0.7 * (3.0 + 0.3 * 9.0) / 400)
    err = np.stack([sim.locs.x_nm, sim.locs.y_nm], 1)[signal] - sim.truth_xy_nm[signal]
    assert abs(err.std() / 9.0 - 1) < 0.01 and abs(err.mean()) < 0.1
    background = np.bincount(sim.locs.group[sim.is_background], minlength=400)
    assert abs(background.mean() - 6.0) < 4 * np.sqrt(6.0 / 400)


def test_formats_round_trip(sim, tmp_path):
    locs.write_thunderstorm(tmp_path / "a.csv", sim.locs)
    locs.write_picasso(tmp_path / "a.hdf5", sim.locs, pixel_nm=110.0)
    for path, atol in ((tmp_path / "a.csv", 1e-3), (tmp_path / "a.hdf5", 1e-2)):
        back = locs.read(path)
        np.testing.assert_allclose(back.x_nm, sim.locs.x_nm, atol=atol, rtol=1e-6)
        np.testing.assert_allclose(back.y_nm, sim.locs.y_nm, atol=atol, rtol=1e-6)
        np.testing.assert_array_equal(back.group, sim.locs.group)
    assert "Pixelsize: 110.0" in (tmp_path / "a.yaml").read_text()


def test_particles_are_grouped_centred_and_padded():
    table = locs.Localisations(
        np.array([1.0, 3.0, 10.0, 20.0, 30.0]),
        np.array([0.0, 2.0, 5.0, 5.0, 8.0]),
        np.array([7, 7, 2, 2, 2]),
        np.zeros(5, int),
        np.ones(5),
        np.ones(5),
    )
    parts = locs.particles(table)
    assert list(parts.groups) == [2, 7] and parts.xy_PxLx2.shape == (2, 3, 2)
    np.testing.assert_array_equal(parts.mask_PxL, [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(parts.xy_PxLx2[0], [[-10, -1], [0, -1], [10, 2]])
    np.testing.assert_allclose(parts.xy_PxLx2[1], [[-1, -1], [1, 1], [0, 0]])


@pytest.mark.parametrize("case", ["no_x", "non_numeric", "empty", "no_locs", "no_yaml", "bad_suffix"])
def test_bad_files(tmp_path, case):
    if case == "no_x":
        path, problem = tmp_path / "a.csv", "missing column 'x [nm]'"
        path.write_text('"frame","y [nm]"\n1,2\n')
    elif case == "non_numeric":
        path, problem = tmp_path / "a.csv", "non-numeric"
        path.write_text('"x [nm]","y [nm]"\n1,abc\n')
    elif case == "empty":
        path, problem = tmp_path / "a.csv", "no localisations"
        path.write_text('"x [nm]","y [nm]"\n')
    elif case == "no_locs":
        path, problem = tmp_path / "a.hdf5", "no 'locs' table"
        with h5py.File(path, "w") as f:
            f.create_dataset("other", data=np.zeros(3))
    elif case == "no_yaml":
        path, problem = tmp_path / "b.hdf5", "sidecar not found"
        with h5py.File(path, "w") as f:
            f.create_dataset("locs", data=np.zeros(3, [("x", "f4"), ("y", "f4")]))
    else:
        path, problem = tmp_path / "a.txt", "unsupported"
        path.write_text("x")
    with pytest.raises(InputError, match=re.escape(problem)) as e:
        locs.read(path)
    assert "\n" not in str(e.value) and path.name in str(e.value).replace(".yaml", path.suffix)


def test_particle_images_are_centred_and_hold_every_localisation():
    xy = np.random.default_rng(0).normal(0, 40.0, (1, 50, 2)).astype(np.float32)
    xy -= xy.mean(1, keepdims=True)
    d = data.LocsArrays(
        jnp.asarray(xy / (10.0 * 64 / 4)), jnp.ones((1, 50)), jnp.asarray([2.0]), __import__("jax").random.key(0)
    )
    images = np.asarray(data.render_particles(d, jnp.asarray([0, 0]), jnp.float32(2.0), jnp.int32(5), (64, 64)))
    assert images[0].sum() == pytest.approx(50.0, rel=1e-3)  # every Gaussian inside the frame sums to 1
    ys, xs = np.mgrid[0:64, 0:64]
    for image in images:
        assert (image * xs).sum() / image.sum() == pytest.approx(32.0, abs=0.05)
        assert (image * ys).sum() / image.sum() == pytest.approx(32.0, abs=0.05)
    assert np.array_equal(images[0], images[1])  # one particle at one step: one image
    later = np.asarray(data.render_particles(d, jnp.asarray([0]), jnp.float32(2.0), jnp.int32(6), (64, 64)))
    assert not np.allclose(images[0], later[0])  # another step: another in-plane angle


@pytest.mark.parametrize("suffix", ["csv", "hdf5"])
def test_training_on_localisations(sim, tmp_path, suffix):
    if suffix == "csv":
        locs.write_thunderstorm(tmp_path / "p.csv", sim.locs)
    else:
        locs.write_picasso(tmp_path / "p.hdf5", sim.locs)
    cfg = tiny.get_config()
    cfg.data.source = "locs"
    cfg.data.path = str(tmp_path / f"p.{suffix}")
    cfg.data.pixel_nm = 5.0
    cfg.data.train_size, cfg.data.test_size, cfg.data.valid_size = 0, 16, 8
    cfg.train.epochs = 1
    cfg.train.steps = 6
    cfg.train.log_every = 3
    state = pipeline.train_and_evaluate(cfg, tmp_path / "run")
    assert int(state.step) == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) for r in records)
    results = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert results["heldout_images"] == 8
