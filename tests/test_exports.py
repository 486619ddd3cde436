"""The final cloud in nm: the density volume against a direct sum, the MRC header, napari's CSV layout,
the Picasso 3D file; a run with data.pixel_nm writes the volume."""

import csv
import json

import h5py
import mrcfile
import numpy as np
import pytest
import yaml

from configs import tiny
from holly_jax import exports, pipeline, volume

RNG = np.random.default_rng(0)
POINTS_NM = RNG.normal(0, 20.0, (40, 3)) + [100.0, -50.0, 10.0]


def test_density_against_a_direct_sum():
    grid = volume.Grid((9, 11, 13), 4.0, np.array([-20.0, -18.0, -15.0]))
    pts = RNG.uniform(-12, 12, (37, 3))
    sigma = 3.5
    got = volume.density(pts, sigma, grid, chunk=8)  # several chunks, the last one padded
    z, y, x = np.meshgrid(
        *(grid.origin[i] + grid.voxel * np.arange(grid.shape[2 - i]) for i in (2, 1, 0)), indexing="ij"
    )
    d2 = (x[..., None] - pts[:, 0]) ** 2 + (y[..., None] - pts[:, 1]) ** 2 + (z[..., None] - pts[:, 2]) ** 2
    direct = (np.exp(-d2 / (2 * sigma**2)) / (2 * np.pi * sigma**2) ** 1.5).sum(-1)
    np.testing.assert_allclose(got, direct, rtol=2e-4, atol=1e-7)


def test_density_integrates_to_the_point_count():
    grid = volume.grid_around(POINTS_NM, 2.0, margin=5 * 6.0)
    vol = volume.density(POINTS_NM, 6.0, grid)
    assert vol.sum() * grid.voxel**3 == pytest.approx(len(POINTS_NM), rel=1e-3)


def test_mrc_header_voxel_size_and_origin(tmp_path):
    grid = exports.write_volume(tmp_path / "v.mrc", POINTS_NM, sigma_nm=6.0)
    with mrcfile.open(tmp_path / "v.mrc") as mrc:
        assert mrc.data.shape == grid.shape
        assert mrc.voxel_size.x == pytest.approx(20.0)  # 2 nm in Ångström
        origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z])
        np.testing.assert_allclose(origin, grid.origin * 10.0, rtol=1e-6)
        # the density's centre of mass, in Ångström from the header, is the points' centroid
        idx = np.indices(mrc.data.shape).reshape(3, -1)[::-1]  # x, y, z voxel indices
        w = mrc.data.reshape(-1)
        centre = origin + (idx * w).sum(1) / w.sum() * mrc.voxel_size.x
    np.testing.assert_allclose(centre / 10.0, POINTS_NM.mean(0), atol=0.05)


def test_napari_csv_layout(tmp_path):
    exports.write_napari_csv(tmp_path / "p.csv", POINTS_NM)
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    # napari_builtins' CSV reader: a header with axis-N columns is a Points layer; data axes are (z, y, x)
    assert rows[0] == ["index", "axis-0", "axis-1", "axis-2"]
    table = np.array(rows[1:], float)
    np.testing.assert_array_equal(table[:, 0], np.arange(len(POINTS_NM)))
    np.testing.assert_allclose(table[:, 1:], POINTS_NM[:, ::-1], atol=1e-4)


def test_picasso_3d_file(tmp_path):
    exports.write_picasso_3d(tmp_path / "c.hdf5", POINTS_NM, sigma_nm=6.0)
    info = list(yaml.safe_load_all((tmp_path / "c.yaml").read_text()))[-1]
    with h5py.File(tmp_path / "c.hdf5") as f:
        t = f["locs"][...]
    px = exports.CAMERA_PIXEL_NM
    assert info["Pixelsize"] == px and t.dtype["z"] == np.float32 and len(t) == len(POINTS_NM)
    assert (t["x"] >= 0).all() and (t["x"] < info["Width"]).all() and (t["y"] < info["Height"]).all()
    np.testing.assert_allclose(np.diff(t["x"]) * px, np.diff(POINTS_NM[:, 0]), atol=1e-3)  # x, y: pixels
    np.testing.assert_allclose(t["z"], POINTS_NM[:, 2], atol=1e-4)  # z: nm, Picasso's 3D convention
    np.testing.assert_allclose(t["lpx"] * px, 6.0, rtol=1e-6)


def test_a_run_with_pixel_nm_writes_the_volume(tmp_path):
    # a unitless run writes none of the nm files: tests/test_evaluate.py, on its trained run
    cfg = tiny.get_config()
    cfg.train.steps, cfg.train.report = 2, False
    cfg.data.pixel_nm = 2.0
    pipeline.fit(cfg, tmp_path / "scaled")
    assert (
        json.loads((tmp_path / "scaled" / "scale.json").read_text())["nm_per_unit"] == 2.0 * cfg.data.image_height / 4
    )
    assert (tmp_path / "scaled" / "final.mrc").exists()
