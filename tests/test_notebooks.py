"""Every experiments/ notebook executes at the tiny scale; the sweep helper's table and its bad input."""

import json
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
    variants = {  # b has a's shapes (its programs come from the compilation cache), not its seed or sigmas
        "a": {"points.num": 30},
        "b": {"points.num": 30, "sigma.list": "2.0,2.0", "seed": 7},
        "c": {"points.num": 30, "refine.steps": 4, "refine.relabel_every": 2},  # a, then a refinement
    }
    frame = sweep.train_variants("configs/tiny.py", variants, tmp_path, scale="tiny", quiet=True)
    assert list(frame.index) == ["a", "b", "c"] and frame.loc["b", "seed"] == 7
    assert frame.loc["b", "final_sigma_in"] == pytest.approx(2.0)
    assert frame.loc["a", "final_sigma_in"] != pytest.approx(2.0)  # a's own schedule, 3 -> 1.5
    assert (frame["points"] == frame["points.num"]).all()
    for name in "ab":  # the evaluation saw each variant's own cloud
        saved = json.loads((tmp_path / name / "eval" / "metrics.json").read_text())
        assert frame.loc[name, "chamfer"] == pytest.approx(saved["chamfer"])
    assert frame.loc["a", "chamfer"] != frame.loc["b", "chamfer"]
    for column in ("chamfer", "rotation_error_median_deg", "train_s", "final_test_loss"):
        assert frame[column].notna().all(), column
    # c differs from a only after training: it started from a's training and only refined
    done = {name: json.loads((tmp_path / name / sweep.DONE).read_text()) for name in variants}
    assert done["c"]["shared_training"] == "a" and "shared_training" not in done["b"]
    records = {name: [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")] for name in "ac"}
    assert [r for r in records["c"] if r.get("phase") != "refine"] == records["a"]
    # its refinement reported at the symmetry breaking (step 1 of 4, a third) and at its end
    assert [r["refine_step"] for r in records["c"] if r.get("phase") == "refine"] == [1, 4]
    step = str(frame.loc["a", "step"])
    assert sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir()) == [step]
    for a, c in zip(
        sorted((tmp_path / "a" / "checkpoints" / step).rglob("*")),
        sorted((tmp_path / "c" / "checkpoints" / step).rglob("*")),
    ):
        assert a.name == c.name and (a.is_dir() or a.read_bytes() == c.read_bytes())
    assert frame.loc["c", "refined_rotation_error_median_deg"] >= 0
    saved = json.loads((tmp_path / "a" / sweep.DONE).read_text())
    del saved["config"]["search"]["at_break"]  # as a run saved before the field existed (it ran as its default)
    (tmp_path / "a" / sweep.DONE).write_text(json.dumps(saved))
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
