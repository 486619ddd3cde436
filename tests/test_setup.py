"""Config values are checked up front: every numeric field of configs/default.py has a range, and a value
outside it (or NaN, or text) is a one-line error naming the field."""

import math

import ml_collections
import pytest

from configs import default, tiny
from holly_jax import setup
from holly_jax.errors import InputError


def _numeric_fields(cfg, prefix=""):
    for name, value in cfg.items():
        if hasattr(value, "items"):
            yield from _numeric_fields(value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + name


def _with(name, value):
    """The tiny config with one field set to any value (built from a dict, as a saved config.json is, so
    the ConfigDict's type checks do not stop a wrong type first)."""
    cfg = tiny.get_config().to_dict()
    *parents, leaf = name.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    return ml_collections.ConfigDict(cfg)


def _outside(bounds):
    """Values just outside a field's range, below and above."""
    step = 1 if bounds.integer else 1e-3
    values = []
    if bounds.low is not None:
        values.append(bounds.low if bounds.low_open else bounds.low - step)
    if bounds.high is not None:
        values.append(bounds.high if bounds.high_open else bounds.high + step)
    return values


def test_every_numeric_field_has_a_range():
    placeholders = {"optim.plr", "refine.plr"}  # None by default, numbers when set
    assert set(_numeric_fields(default.get_config())) | placeholders == set(setup.BOUNDS)


def test_the_defaults_and_the_tiny_config_pass():
    setup.check_config(default.get_config())
    setup.check_config(tiny.get_config())


@pytest.mark.parametrize("name", sorted(setup.BOUNDS))
def test_out_of_range_values_are_one_line_errors_naming_the_field(name):
    bounds = setup.BOUNDS[name]
    bad = _outside(bounds) + ["ten", True] + ([2.5] if bounds.integer else [math.nan, math.inf])
    for value in bad:
        with pytest.raises(InputError) as info:
            setup.check_config(_with(name, value))
        message = str(info.value)
        assert message.startswith(f"config.{name} must be ") and "\n" not in message, (value, message)


def test_the_ends_of_a_closed_range_pass():
    setup.check_config(_with("data.dropout", 0.0))
    setup.check_config(_with("data.spawn", 1.0))
    setup.check_config(_with("data.image_height", 8))
    setup.check_config(_with("seed", 2**32 - 1))
    setup.check_config(_with("refine.plr", None))


def test_a_bad_sigma_list_is_found_up_front():
    with pytest.raises(InputError, match="sigma entry 2 must be positive and finite"):
        setup.check_config(_with("sigma.list", "3,nan"))
