"""Files written by Picasso 0.11.3 and locan 0.22.0 themselves (tests/fixtures/README.md says with which
calls) read with the right counts, groups, units, precisions and PSF widths. The expected figures in
tests/fixtures/expected.json were read back with those tools' own readers (picasso.io.load_locs with
lib.get_from_metadata, locan.load_thunderstorm_file)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from holly_jax import locs
from holly_jax.errors import InputError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
GROUPED = [
    "picasso_picked.hdf5",
    "picasso_3d.hdf5",
    "pandas_locs.hdf5",
    "locan_clustered.csv",
    "locan_ts_uncertainty.csv",
]


@pytest.mark.parametrize("name", GROUPED)
def test_real_files_load_with_their_groups_units_and_precisions(name, capsys):
    want = EXPECTED[name]
    table = locs.read(FIXTURES / name)
    counts = {str(g): int(c) for g, c in zip(*np.unique(table.group, return_counts=True))}
    expected_counts = {g: c for g, c in want["locs_per_group"].items() if int(g) >= 0}  # locan's noise: -1
    assert counts == expected_counts
    noise = want.get("n_noise_rows") or 0
    assert len(table.x_nm) == want["n_rows"] - noise
    if not noise:
        assert table.x_nm.mean() == pytest.approx(want["mean_x_nm"], abs=0.01)
        assert table.y_nm.mean() == pytest.approx(want["mean_y_nm"], abs=0.01)
        assert np.nanmean(table.precision_nm) == pytest.approx(want["mean_precision_nm"], rel=1e-4)
    if want.get("mean_psf_sigma_nm") is not None and not noise:
        assert np.nanmean(table.psf_nm) == pytest.approx(want["mean_psf_sigma_nm"], rel=0.02)
    if noise:
        assert f"{noise} localisations with a negative group id" in capsys.readouterr().err
    if want.get("has_z"):
        assert "'z' ignored" in capsys.readouterr().err


def test_picasso_numpy_tagged_yaml_and_the_later_pixel_size():
    want = EXPECTED["picasso_picked.hdf5"]
    assert want["yaml_has_numpy_tags"] and want["pixelsize_values_per_part"] == [None, 130.0, 108.0]
    parts = locs.metadata_parts(FIXTURES / "picasso_picked.yaml")
    assert [p.get("Pixelsize") for p in parts] == want["pixelsize_values_per_part"]
    assert locs.picasso_pixel_nm(FIXTURES / "picasso_picked.hdf5") == want["pixelsize_nm"] == 108.0


def test_old_uncertainty_column_is_the_precision_not_the_psf_width():
    want = EXPECTED["locan_ts_uncertainty.csv"]
    table = locs.read(FIXTURES / "locan_ts_uncertainty.csv")
    assert np.nanmean(table.precision_nm) == pytest.approx(want["mean_precision_nm"], rel=1e-4)  # ~6.5 nm
    assert np.nanmean(table.psf_nm) == pytest.approx(want["mean_psf_sigma_nm"], rel=1e-4)  # ~130 nm


@pytest.mark.parametrize("name", ["picasso_raw.hdf5", "picasso_export_ts.csv"])
def test_files_without_groups_ask_to_pick_or_cluster(name):
    """Picasso's unpicked Localize output, and its ThunderSTORM export (which drops `group`)."""
    with pytest.raises(InputError, match=re.escape("pick particles in Picasso")) as e:
        locs.read(FIXTURES / name)
    assert "\n" not in str(e.value) and name in str(e.value)
    one = locs.read(FIXTURES / name, one_particle=True)
    assert len(one.x_nm) == EXPECTED[name]["n_rows"] and set(one.group) == {0}
    assert one.x_nm.mean() == pytest.approx(EXPECTED[name]["mean_x_nm"], abs=0.01)
