import numpy as np
import pytest

from holly_jax import schedule
from holly_jax.errors import InputError


@pytest.mark.parametrize(
    "step,stepped,linear",
    [
        (0, 10.0, 10.0),  # p = 0: first entry
        (5, 10.0, 9.0),  # position 0.5
        (10, 8.0, 8.0),  # position exactly 1: takes entry 1 in both forms
        (20, 6.0, 6.0),
        (29, 6.0, 4.2),  # position 2.9
        (30, 4.0, 4.0),  # the end
        (45, 4.0, 4.0),  # past the end clamps
    ],
)
def test_schedule_values(step, stepped, linear):
    sigmas = np.array([10, 8, 6, 4], np.float32)
    assert float(schedule.sigma_at(sigmas, step, 30, interpolate=False)) == pytest.approx(stepped)
    assert float(schedule.sigma_at(sigmas, step, 30, interpolate=True)) == pytest.approx(linear, rel=1e-6)


def test_teapot_list_position_matches_spec_formula():
    sigmas = np.asarray(schedule.TEAPOT_SIGMAS, np.float32)
    batches, epochs = 4000, 20
    for epoch, batch in [(0, 0), (3, 1234), (10, 0), (19, 3999)]:
        p = (epoch * batches + batch) / (epochs * batches)
        pos = (len(sigmas) - 1) * p
        lo = int(np.floor(pos))
        want = sigmas[lo] + (sigmas[min(lo + 1, 9)] - sigmas[lo]) * (pos - lo)
        got = schedule.sigma_at(sigmas, epoch * batches + batch, epochs * batches, interpolate=True)
        assert float(got) == pytest.approx(want, rel=1e-5)
        assert float(schedule.sigma_at(sigmas, epoch * batches + batch, epochs * batches, False)) == sigmas[lo]


def test_single_sigma_is_constant():
    for step in (0, 7, 100):
        assert float(schedule.sigma_at(np.array([2.5], np.float32), step, 100, True)) == 2.5


def test_sigma_file(tmp_path):
    f = tmp_path / "sigma.csv"
    f.write_text("10,8,6.4,5,4,3.2,2.4,1.9,1.5,1.2\n")
    np.testing.assert_allclose(schedule.read_sigma_file(f), schedule.TEAPOT_SIGMAS)
    for text, problem in [
        ("10,0,1", "positive"),
        ("10,-2", "positive"),
        ("10,abc", "not a number"),
        ("", "no sigma"),
        ("10,nan", "positive"),
    ]:
        f.write_text(text)
        with pytest.raises(InputError, match=problem) as e:
            schedule.read_sigma_file(f)
        assert "sigma.csv" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="not found"):
        schedule.read_sigma_file(tmp_path / "missing.csv")
