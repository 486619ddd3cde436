"""FITS files and folders: reading and writing, the per-sigma folder layout, loading a folder, the device blur."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits as astro_fits
from scipy.ndimage import gaussian_filter

from holly_jax import fits
from holly_jax.errors import InputError

SHARED_SETS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cep152-fits"
SHARED = SHARED_SETS / "2.0"


def test_round_trip_and_row_flip(tmp_path):
    image = np.zeros((6, 5), np.float32)
    image[0, 1] = 3.0  # top row in holly-jax order (+y up)
    fits.write_image(tmp_path / "a.fits", image, {"sigma": 2.0})
    raw = astro_fits.getdata(tmp_path / "a.fits")
    assert raw.dtype.byteorder == ">" and raw.dtype.itemsize == 4  # big-endian float32 on disk
    assert raw[-1, 1] == 3.0  # FITS stores the bottom row first
    np.testing.assert_array_equal(fits.read_image(tmp_path / "a.fits"), image)
    assert astro_fits.getheader(tmp_path / "a.fits")["SIGMA"] == 2.0


def test_cube_is_summed_over_first_axis(tmp_path):
    cube = np.random.default_rng(0).uniform(size=(3, 4, 5)).astype(">f4")
    astro_fits.PrimaryHDU(cube).writeto(tmp_path / "cube.fits")
    np.testing.assert_allclose(fits.read_image(tmp_path / "cube.fits"), cube.sum(0)[::-1], rtol=1e-6)


@pytest.mark.skipif(not SHARED.exists(), reason="shared CEP152 fixtures absent")
def test_real_cep152_image_reads():
    image = fits.read_image(SHARED / "test_00.fits")
    assert image.shape == (128, 128) and image.dtype == np.float32
    assert image.sum() == pytest.approx(200.0, rel=1e-4)


def test_bad_files(tmp_path):
    (tmp_path / "text.fits").write_text("not a fits file at all")
    nan = np.ones((4, 4), np.float32)
    nan[1, 1] = np.nan
    astro_fits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
    good = tmp_path / "good.fits"
    fits.write_image(good, np.ones((16, 16)))
    (tmp_path / "cut.fits").write_bytes(good.read_bytes()[:3000])
    for name, problem in [
        ("text.fits", "not a FITS file"),
        ("nan.fits", "NaN"),
        ("missing.fits", "not found"),
        ("cut.fits", "corrupt or truncated"),
    ]:
        with pytest.raises(InputError, match=problem) as e:
            fits.read_image(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("sigma,shape", [(0.7, (20, 20)), (2.0, (32, 24)), (5.5, (40, 40))])
def test_device_blur_matches_scipy(sigma, shape):
    images = np.random.default_rng(0).uniform(size=(3, *shape)).astype(np.float32)
    got = np.asarray(fits.blur(jnp.asarray(images), jnp.float32(sigma)))
    for image, g in zip(images, got):
        want = gaussian_filter(image.astype(np.float64), sigma, mode="constant", truncate=max(shape) / sigma + 1)
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_blur_keeps_the_sum_of_an_inner_point():
    image = np.zeros((1, 41, 41), np.float32)
    image[0, 20, 20] = 5.0
    blurred = np.asarray(fits.blur(jnp.asarray(image), jnp.float32(3.0)))
    assert blurred.sum() == pytest.approx(5.0, rel=1e-4)
    assert np.unravel_index(blurred.argmax(), blurred.shape) == (0, 20, 20)


def test_sigma_folder_names(tmp_path):
    for name in ("10.0", "08", "1.2", "notes", "2"):
        (tmp_path / name).mkdir()
    (tmp_path / "3.0").write_text("a file, not a folder")
    assert {k: p.name for k, p in fits.sigma_folders(tmp_path).items()} == {
        10.0: "10.0",
        8.0: "08",
        1.2: "1.2",
        2.0: "2",
    }


def test_load_folder_skips_bad_images_and_counts_them(tmp_path, capsys):
    rng = np.random.default_rng(1)
    good = [rng.uniform(size=(16, 12)).astype(np.float32) for _ in range(3)]
    for i, image in enumerate(good):
        fits.write_image(tmp_path / f"im{i}.fits", image)
    fits.write_image(tmp_path / "zero.fits", np.zeros((16, 12)))
    fits.write_image(tmp_path / "small.fits", np.ones((8, 8)))
    nan = np.ones((16, 12), np.float32)
    nan[3, 3] = np.nan
    astro_fits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    (tmp_path / "readme.txt").write_text("not an image")
    loaded = fits.load_folder(tmp_path, (16, 12))
    assert [Path(f).name for f in loaded.files] == ["im0.fits", "im1.fits", "im2.fits"]
    np.testing.assert_array_equal(loaded.images_NxHxW, np.stack(good))
    assert len(loaded.skipped) == 5
    err = capsys.readouterr().err
    for name, problem in [
        ("zero.fits", "no positive intensity"),
        ("small.fits", "8x8, expected 16x12"),
        ("nan.fits", "NaN"),
        ("broken.fits", "corrupt or truncated"),
        ("readme.txt", "not a FITS"),
    ]:
        assert any(name in line and problem in line for line in err.splitlines()), (name, err)


def test_large_folders_are_memory_mapped(tmp_path):
    for i in range(4):
        fits.write_image(tmp_path / "in" / f"{i}.fits", np.full((8, 8), i + 1.0))
    loaded = fits.load_folder(tmp_path / "in", (8, 8), cache_dir=tmp_path / "cache", memory_limit_bytes=100)
    assert isinstance(loaded.images_NxHxW, np.memmap)
    assert (tmp_path / "cache" / "in.npy").exists()
    np.testing.assert_array_equal(loaded.images_NxHxW[:, 0, 0], [1, 2, 3, 4])


def test_empty_or_missing_folders(tmp_path):
    with pytest.raises(InputError, match="no FITS images"):
        fits.load_folder(tmp_path, (8, 8))
    with pytest.raises(InputError, match="data folder not found"):
        fits.load_folder(tmp_path / "nope", (8, 8))
    fits.write_image(tmp_path / "zero.fits", np.zeros((8, 8)))
    with pytest.raises(InputError, match="no usable FITS images") as e:
        fits.load_folder(tmp_path, (8, 8))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not SHARED_SETS.exists(), reason="shared CEP152 fixtures absent")
def test_real_cep152_folder_loads():
    folders = fits.sigma_folders(SHARED_SETS)
    assert list(folders) == [2.0]
    loaded = fits.load_folder(folders[2.0], (128, 128))
    assert loaded.images_NxHxW.shape == (10, 128, 128) and not loaded.skipped
    np.testing.assert_allclose(loaded.images_NxHxW.sum((1, 2)), 200.0, rtol=1e-4)
