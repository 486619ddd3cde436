"""Localisation tables: the simulator's statistics, both formats read and written, particles, bad input,
training on them. Files written by Picasso and locan themselves are in tests/test_locs_fixtures.py."""

import json
import re
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import yaml

from configs import tiny
from holly_jax import data, locs, locsim, pipeline, pointfile
from holly_jax.errors import InputError

REPO = Path(__file__).resolve().parents[1]
GT = pointfile.read_points(REPO / "objs" / "nuclear_pore.obj")

# What picasso.io.import_ts (Picasso 0.11.3) requires of a 2D ThunderSTORM CSV, and the dtypes
# picasso.io.save_locs writes for picked localisations (picasso/io.py, picasso/lib.py ensure_sanity).
IMPORT_TS_COLUMNS = [
    "frame",
    "x [nm]",
    "y [nm]",
    "intensity [photon]",
    "offset [photon]",
    "uncertainty_xy [nm]",
    "sigma [nm]",
]
PICASSO_REQUIRED_INFO = ("Width", "Height", "Frames", "Pixelsize")


@pytest.fixture(scope="module")
def sim():
    return locsim.simulate(GT, 400, seed=0, labelling=0.7, blinks=3.0, precision_nm=9.0, background=6.0)


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
    # the pose recorded is the one drawn: a particle's signal, centred, is the rotated structure projected
    p = 3
    rows = signal & (sim.locs.group == p)
    truth = sim.truth_xy_nm[rows]
    projected = (GT * 50.0) @ sim.rotations_Px3x3[p].T
    d = np.linalg.norm(truth[:, None, :] - truth.mean(0) - (projected[None, :, :2] - projected[:, :2].mean(0)), axis=-1)
    assert d.min(1).max() < 30.0  # every true position is one of the projected points (up to the labelled mean)


def test_formats_round_trip(sim, tmp_path):
    locs.write_thunderstorm(tmp_path / "a.csv", sim.locs)
    locs.write_picasso(tmp_path / "a.hdf5", sim.locs, pixel_nm=110.0)
    for path, atol in ((tmp_path / "a.csv", 1e-3), (tmp_path / "a.hdf5", 1e-2)):
        back = locs.read(path)
        np.testing.assert_allclose(back.x_nm, sim.locs.x_nm, atol=atol, rtol=1e-6)
        np.testing.assert_allclose(back.y_nm, sim.locs.y_nm, atol=atol, rtol=1e-6)
        np.testing.assert_array_equal(back.group, sim.locs.group)
        np.testing.assert_allclose(back.precision_nm, 9.0, rtol=1e-5)  # precision, not the PSF width
        np.testing.assert_allclose(back.psf_nm, 130.0, rtol=1e-5)


def test_picasso_file_has_what_picasso_requires(sim, tmp_path):
    locs.write_picasso(tmp_path / "a.hdf5", sim.locs, pixel_nm=110.0)
    parts = list(yaml.safe_load_all((tmp_path / "a.yaml").read_text()))  # plain YAML, no Python tags
    info = parts[-1]
    assert all(key in info for key in PICASSO_REQUIRED_INFO) and info["Pixelsize"] == 110.0
    with h5py.File(tmp_path / "a.hdf5") as f:
        table = f["locs"][...]
        assert json.loads(f["metadata"][()]) == parts  # embedded as Picasso 0.11 does
    assert table.dtype["frame"] == np.uint32 and table.dtype["group"] == np.int32
    assert all(table.dtype[c] == np.float32 for c in ("x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy"))
    # Picasso's ensure_sanity keeps rows with 0 <= x < Width, 0 <= y < Height and non-negative lp, sx, photons
    kept = (table["x"] >= 0) & (table["x"] < info["Width"]) & (table["y"] >= 0) & (table["y"] < info["Height"])
    kept &= (table["lpx"] >= 0) & (table["lpy"] >= 0) & (table["photons"] >= 0) & (table["sx"] >= 0)
    assert kept.all() and len(table) == len(sim.locs.x_nm)
    assert table["frame"].max() < info["Frames"]


def test_thunderstorm_file_has_what_import_ts_requires(sim, tmp_path):
    locs.write_thunderstorm(tmp_path / "a.csv", sim.locs)
    df = pd.read_csv(tmp_path / "a.csv")
    assert set(IMPORT_TS_COLUMNS) <= set(df.columns) and "group" in df.columns
    assert np.allclose(df["uncertainty_xy [nm]"], 9.0) and np.allclose(df["sigma [nm]"], 130.0)
    assert (df["frame"] == df["frame"].astype(int)).all()


def _picasso(tmp_path, name="p", yaml_text="Pixelsize: 100.0\n", **columns):
    names = list(columns) or ["x", "y"]
    values = columns or {"x": np.arange(5.0), "y": np.arange(5.0)}
    table = np.zeros(len(next(iter(values.values()))), [(c, "f4") for c in names])
    for c in names:
        table[c] = values[c]
    path = tmp_path / f"{name}.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("locs", data=table)
    if yaml_text is not None:
        (tmp_path / f"{name}.yaml").write_text(yaml_text)
    return path


def test_picasso_yaml_numpy_tags_and_the_last_pixel_size(tmp_path):
    # what yaml.dump_all writes for numpy scalars, as Picasso's save_info does
    parts = [
        {"Width": np.int64(32), "Pixelsize": np.float64(130.0)},
        {"Generated by": "Render", "Pixelsize": np.float32(108.0)},
    ]
    text = yaml.dump_all(parts)
    assert "!!python/object/apply:numpy" in text
    path = _picasso(tmp_path, yaml_text=text, x=[1.0, 2.0], y=[1.0, 1.0])
    back = locs.read(path, one_particle=True)
    np.testing.assert_allclose(back.x_nm, [108.0, 216.0])  # the later part's pixel size wins
    assert locs.metadata_parts(path.with_suffix(".yaml"))[0] == {"Width": 32, "Pixelsize": 130.0}


def test_picasso_yaml_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    text = f"Pixelsize: 100.0\nx: !!python/object/apply:os.system ['touch {marker}']\n"
    locs.read(_picasso(tmp_path, yaml_text=text), one_particle=True)
    assert not marker.exists()


def test_picasso_metadata_embedded_without_a_sidecar(tmp_path):
    path = _picasso(tmp_path, yaml_text=None)
    with h5py.File(path, "a") as f:
        f.create_dataset("metadata", data=json.dumps([{"Pixelsize": 130.0}, {"Pixelsize": 90.0}]))
    np.testing.assert_allclose(locs.read(path, one_particle=True).x_nm, np.arange(5.0) * 90.0)


def test_pandas_written_table(tmp_path):
    df = pd.DataFrame(
        {"x": [1.0, 1.5, 9.0, 9.5], "y": [1.0, 1.2, 2.0, 2.5], "lpx": 0.05, "lpy": 0.07, "group": [4, 4, 9, 9]}
    )
    df.to_hdf(tmp_path / "p.hdf5", key="locs")
    (tmp_path / "p.yaml").write_text("Pixelsize: 100\n")
    back = locs.read(tmp_path / "p.hdf5")
    np.testing.assert_allclose(back.x_nm, [100, 150, 900, 950])
    np.testing.assert_allclose(back.precision_nm, 6.0)
    assert list(back.group) == [4, 4, 9, 9]


def test_thunderstorm_columns_by_meaning(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(
        '"id","frame","x [um]","y [um]","z [nm]","sigma1 [nm]","sigma2 [nm]","uncertainty [nm]","cluster_label"\n'
        "1,3,1.5,2.0,10,120,140,6.5,2\n2,4,1.6,2.1,20,120,140,7.5,-1\n3,5,1.7,2.2,30,120,140,8.5,2\n"
    )
    back = locs.read(path)
    np.testing.assert_allclose(back.x_nm, [1500, 1700])  # µm to nm; the noise row (-1) dropped
    np.testing.assert_allclose(back.precision_nm, [6.5, 8.5])
    np.testing.assert_allclose(back.psf_nm, 130.0)
    assert list(back.group) == [2, 2] and list(back.frame) == [3, 5]
    err = capsys.readouterr().err
    assert "'z [nm]' ignored" in err and "1 localisations with a negative group id" in err


def test_no_group_column(tmp_path):
    field = tmp_path / "field.csv"
    field.write_text("x [nm],y [nm]\n0,0\n5000,100\n")
    with pytest.raises(InputError, match="span 5.0 µm .*pick particles in Picasso") as e:
        locs.read(field)
    assert "\n" not in str(e.value) and "field.csv" in str(e.value)
    assert len(locs.read(field, one_particle=True).x_nm) == 2
    small = tmp_path / "one.csv"
    small.write_text("x [nm],y [nm]\n0,0\n50,100\n")
    assert list(locs.read(small).group) == [0, 0]


BAD = {
    "no_x": ("a.csv", "missing column 'x [nm]'", '"frame","y [nm]"\n1,2\n'),
    "pixels": ("a.csv", "camera pixels", '"x [px]","y [px]"\n1,2\n'),
    "non_numeric": ("a.csv", "non-numeric", '"x [nm]","y [nm]"\n1,abc\n'),
    "truncated": ("a.csv", "non-finite", '"x [nm]","y [nm]"\n1,2\n3\n'),
    "empty": ("a.csv", "no localisations", '"x [nm]","y [nm]"\n'),
    "nothing": ("a.csv", "not a readable CSV", ""),
    "nan": ("a.csv", "non-finite", '"x [nm]","y [nm]"\n1,nan\n'),
    "bad_group": ("a.csv", "whole numbers", '"x [nm]","y [nm]","group"\n1,2,0.5\n'),
    "bad_suffix": ("a.txt", "unsupported", "x"),
    "not_hdf5": ("a.hdf5", "not a readable HDF5", "plain text"),
}


@pytest.mark.parametrize("case", [*BAD, "no_locs", "no_yaml", "yaml_garbage", "no_pixelsize", "bad_pixelsize", "no_y"])
def test_bad_files(tmp_path, case):
    if case in BAD:
        name, problem, text = BAD[case]
        path = tmp_path / name
        path.write_text(text)
    elif case == "no_locs":
        path, problem = tmp_path / "a.hdf5", "no 'locs' table"
        with h5py.File(path, "w") as f:
            f.create_dataset("other", data=np.zeros(3))
    elif case == "no_y":
        path, problem = _picasso(tmp_path, x=[1.0]), "no 'y' column"
    else:
        text, problem = {
            "no_yaml": (None, "sidecar not found"),
            "yaml_garbage": ("a: [b\n", "not readable YAML"),
            "no_pixelsize": ("Width: 3\n---\nHeight: 4\n", "no 'Pixelsize'"),
            "bad_pixelsize": ("Pixelsize: -3\n", "must be positive"),
        }[case]
        path = _picasso(tmp_path, yaml_text=text)
    with pytest.raises(InputError, match=re.escape(problem)) as e:
        locs.read(path, one_particle=case not in BAD)
    assert "\n" not in str(e.value) and path.stem in str(e.value)


def test_particles_are_grouped_centred_and_padded():
    n = np.full(5, np.nan)
    table = locs.Localisations(
        np.array([1.0, 3.0, 10.0, 20.0, 30.0]),
        np.array([0.0, 2.0, 5.0, 5.0, 8.0]),
        np.array([7, 7, 2, 2, 2]),
        np.zeros(5, int),
        n,
        n,
        n,
    )
    parts = locs.particles(table)
    assert list(parts.groups) == [2, 7] and parts.xy_PxLx2.shape == (2, 3, 2)
    np.testing.assert_array_equal(parts.mask_PxL, [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(parts.xy_PxLx2[0], [[-10, -1], [0, -1], [10, 2]])
    np.testing.assert_allclose(parts.xy_PxLx2[1], [[-1, -1], [1, 1], [0, 0]])


def test_auto_scale_is_the_particles_size(sim):
    parts = locs.particles(sim.locs)
    nm = locs.auto_nm_per_unit(parts)
    r = np.linalg.norm(parts.xy_PxLx2, axis=-1)[parts.mask_PxL > 0] / nm
    assert np.mean(r <= 1.25) == pytest.approx(0.9, abs=0.002)


def test_particle_images_are_centred_and_hold_every_localisation():
    xy = np.random.default_rng(0).normal(0, 40.0, (1, 50, 2)).astype(np.float32)
    xy -= xy.mean(1, keepdims=True)
    d = data.LocsArrays(jnp.asarray(xy / (10.0 * 64 / 4)), jnp.ones((1, 50)), jnp.asarray([2.0]), jax.random.key(0))
    images = np.asarray(data.render_particles(d, jnp.asarray([0, 0]), jnp.float32(2.0), jnp.int32(5), (64, 64)))
    assert images[0].sum() == pytest.approx(50.0, rel=1e-3)  # every Gaussian inside the frame sums to 1
    ys, xs = np.mgrid[0:64, 0:64]
    for image in images:
        assert (image * xs).sum() / image.sum() == pytest.approx(32.0, abs=0.05)
        assert (image * ys).sum() / image.sum() == pytest.approx(32.0, abs=0.05)
    assert np.array_equal(images[0], images[1])  # one particle at one step: one image
    later = np.asarray(data.render_particles(d, jnp.asarray([0]), jnp.float32(2.0), jnp.int32(6), (64, 64)))
    assert not np.allclose(images[0], later[0])  # another step: another in-plane angle


def test_in_plane_turn_is_the_one_drawn():
    """The image at a step is the particle turned by data.in_plane: drawing the turned points directly
    gives the same image (so poses.csv can undo the turn)."""
    from holly_jax import render

    xy = np.random.default_rng(1).normal(0, 0.4, (2, 30, 2)).astype(np.float32)
    d = data.LocsArrays(jnp.asarray(xy), jnp.ones((2, 30)), jnp.asarray([2.0]), jax.random.key(3))
    idx = jnp.asarray([1, 0])
    images = data.render_particles(d, idx, jnp.float32(1.5), jnp.int32(7), (32, 32))
    R = data.in_plane(d, idx, jnp.int32(7))
    assert np.allclose(np.asarray(R)[:, 2], [0, 0, 1]) and not np.allclose(np.asarray(R)[0], np.eye(3))
    pts = jnp.concatenate([d.xy_PxLx2[idx], jnp.zeros((2, 30, 1))], -1)
    direct = render.render_items(pts, R, jnp.zeros((2, 2)), jnp.full((2,), 1.5), d.mask_PxL[idx], (32, 32))
    np.testing.assert_allclose(images, direct, atol=1e-6)


@pytest.mark.parametrize("suffix", ["csv", "hdf5"])
def test_training_on_localisations(sim, tmp_path, suffix):
    if suffix == "csv":
        locs.write_thunderstorm(tmp_path / "p.csv", sim.locs)
    else:
        locs.write_picasso(tmp_path / "p.hdf5", sim.locs)
    cfg = tiny.get_config()
    cfg.data.source = "locs"
    cfg.data.path = str(tmp_path / f"p.{suffix}")
    cfg.data.pixel_nm = 5.0 if suffix == "csv" else 0.0
    cfg.data.train_size, cfg.data.test_size, cfg.data.valid_size = 0, 16, 8
    cfg.train.epochs = 1
    cfg.train.steps = 6
    cfg.train.log_every = 3
    run = tmp_path / "run"
    state = pipeline.train_and_evaluate(cfg, run)
    assert int(state.step) == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) for r in records)
    results = json.loads((run / "eval" / "metrics.json").read_text())
    assert results["heldout_images"] == 8
    scale = json.loads((run / "scale.json").read_text())
    h = cfg.data.image_height
    if suffix == "csv":
        assert scale["nm_per_unit"] == pytest.approx(5.0 * h / 4) and scale["pixel_nm"] == pytest.approx(5.0)
    else:
        assert scale["nm_per_unit"] == pytest.approx(locs.auto_nm_per_unit(locs.particles(sim.locs)), rel=1e-4)
    assert results["nm_per_unit"] == pytest.approx(scale["nm_per_unit"])
    # every particle has a pose row keyed by its group id; nm translations are the unit ones times the scale
    table = pd.read_csv(run / "eval" / "poses.csv")
    assert set(table["split"]) == {"heldout", "train"} and len(table) == 400 - 16  # train + valid
    assert table["item"].is_unique and set(table["item"]) <= set(range(400))
    np.testing.assert_allclose(table["tx_nm"], table["tx"] * scale["nm_per_unit"], rtol=1e-4, atol=1e-6)
    # the final cloud in nm is the object-unit one times the recorded scale
    final, final_nm = pointfile.read_points(run / "final.ply"), pointfile.read_points(run / "final_nm.ply")
    np.testing.assert_allclose(final_nm, final * scale["nm_per_unit"], rtol=1e-5, atol=1e-4)
    assert all((run / name).exists() for name in ("final_nm.csv", "final_picasso.hdf5", "final.mrc"))


def test_locan_tables_by_property_name(tmp_path, capsys):
    """What locan's loaders hand over (a LocData's table, locan's property names) maps to our columns."""
    frame = pd.DataFrame(
        {
            "position_x": [10.0, 20.0, 30.0],
            "position_y": [5.0, 6.0, 7.0],
            "position_z": [0.0, 1.0, 2.0],
            "uncertainty_x": [4.0, 6.0, 8.0],
            "uncertainty_y": [6.0, 8.0, 10.0],
            "psf_sigma": 120.0,
            "cluster_label": [1, 1, 2],
            "frame": [0, 1, 2],
        }
    )
    t = locs.with_groups(tmp_path / "x.smlm", locs.from_locan(tmp_path / "x.smlm", frame), False)
    np.testing.assert_allclose(t.x_nm, [10, 20, 30])
    np.testing.assert_allclose(t.precision_nm, [5, 7, 9])
    np.testing.assert_allclose(t.psf_nm, 120.0)
    assert list(t.group) == [1, 1, 2] and "'position_z' ignored" in capsys.readouterr().err


def test_formats_beyond_ours_ask_for_locan(tmp_path, monkeypatch):
    path = tmp_path / "movie.txt"
    path.write_text("# rapidSTORM\n1 2 3\n")
    monkeypatch.setitem(__import__("sys").modules, "locan", None)  # as on a machine without the extra
    with pytest.raises(InputError, match="needs locan: pip install locan"):
        locs.read(path, file_type="rapidstorm")
    with pytest.raises(InputError, match="unknown file type 'zeiss'"):
        locs.read(path, file_type="zeiss")
    with pytest.raises(InputError, match="data.file_type = rapidstorm"):
        locs.read(path)


def test_config_reaches_the_reader(tmp_path, monkeypatch):
    """data.one_particle and data.file_type are handed to the reader: without the first the file is refused
    as several particles; with it, it is one particle (too few to split); the second asks for locan."""
    field = tmp_path / "field.csv"
    field.write_text("x [nm],y [nm]\n" + "".join(f"{5000 * (i % 2)},{i}\n" for i in range(20)))
    cfg = tiny.get_config()
    cfg.data.source, cfg.data.path = "locs", str(field)
    with pytest.raises(InputError, match="pick particles in Picasso"):
        data.load(cfg, 8)
    cfg.data.one_particle = True
    with pytest.raises(InputError, match="leave nothing to train on out of 1"):
        data.load(cfg, 8)
    monkeypatch.setitem(__import__("sys").modules, "locan", None)
    cfg.data.file_type = "smap"
    with pytest.raises(InputError, match="reading a smap file needs locan"):
        data.load(cfg, 8)
