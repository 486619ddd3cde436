import numpy as np
import pytest
from astropy.io import fits as astro_fits

from holly_jax import fits
from holly_jax.errors import InputError
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cep152-fits" / "2.0"


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
    for name, problem in [("text.fits", "not a FITS file"), ("nan.fits", "NaN"), ("missing.fits", "not found"),
                          ("cut.fits", "corrupt or truncated")]:
        with pytest.raises(InputError, match=problem) as e:
            fits.read_image(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
