"""Every experiments/ notebook executes at the tiny scale; the sweep helper's table and its bad input."""

from pathlib import Path

import pytest

from configs import bunny
from experiments.execute import execute
from holly_jax import sweep
from holly_jax.errors import InputError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "experiments").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {
        "robustness",
        "sigma_schedule",
        "num_points",
        "sigma_prediction",
        "pose_ambiguity",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_at_tiny_scale(path, tmp_path):
    nb = execute(path, "tiny", runs=tmp_path, save=False)  # raises if any cell fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    tables = [o for c in code for o in c.outputs if "text/html" in o.get("data", {})]
    plots = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert tables and plots  # the results table and at least one figure were drawn


def test_sweep_runs_reads_back_and_tabulates(tmp_path):
    variants = {"a": {"points.num": 30}, "b": {"points.num": 40, "sigma.list": "2.0"}}
    frame = sweep.train_variants("configs/tiny.py", variants, tmp_path, scale="tiny", quiet=True)
    assert list(frame.index) == ["a", "b"] and list(frame["points.num"]) == [30, 40]
    assert frame.loc["b", "final_sigma_in"] == pytest.approx(2.0)
    assert (frame["points"] == frame["points.num"]).all()  # the evaluation saw each variant's own cloud
    for column in ("chamfer", "rotation_error_median_deg", "train_s", "final_test_loss"):
        assert frame[column].notna().all(), column
    mtime = (tmp_path / "a" / sweep.DONE).stat().st_mtime
    again = sweep.train_variants(
        "configs/tiny.py", variants, tmp_path, scale="tiny", quiet=True
    )  # read back, not rerun
    assert (tmp_path / "a" / sweep.DONE).stat().st_mtime == mtime
    assert again["chamfer"].tolist() == frame["chamfer"].tolist()


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"train.bogus": 1}, "unknown config field 'train.bogus'"),
        ({"nothing.here": 1}, "unknown config field 'nothing.here'"),
    ],
)
def test_sweep_rejects_unknown_fields(changes, problem):
    with pytest.raises(InputError, match=problem):
        sweep.variant_config("configs/tiny.py", changes, "tiny")


def test_sweep_rejects_unknown_scale_and_missing_config():
    with pytest.raises(InputError, match="unknown scale 'huge'"):
        sweep.variant_config("configs/tiny.py", {}, "huge")
    with pytest.raises(InputError, match="config file not found"):
        sweep.load_config("configs/none.py")


def test_sweep_config_variants_as_launch_takes_them():
    assert sweep.load_config("configs/bunny.py:dropout").to_dict() == bunny.get_config("dropout").to_dict()
    assert sweep.load_config("configs/bunny.py").data.dropout == 0.0
    with pytest.raises(InputError, match=r"bunny\.py: unknown bunny variant 'loud'"):
        sweep.load_config("configs/bunny.py:loud")
    with pytest.raises(InputError, match=r"tiny\.py: this config takes no variant \(got 'x'\)"):
        sweep.load_config("configs/tiny.py:x")
