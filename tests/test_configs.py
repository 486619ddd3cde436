"""Every bundled config, in every variant, has exactly the fields of configs/default.py and passes the
config check: a misspelt field in a config file would otherwise be added silently and never read."""

import importlib
from pathlib import Path

import pytest

from configs import cep152, default, quick
from holly_jax.setup import check_config

CONFIGS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
    if p.stem not in ("__init__", "default")
)


def _fields(cfg, prefix=""):
    out = set()
    for name, value in cfg.items():
        out |= _fields(value, f"{prefix}{name}.") if hasattr(value, "items") else {prefix + name}
    return out


def _get(cfg, dotted):
    for name in dotted.split("."):
        cfg = cfg[name]
    return cfg


def _variants():
    for name in CONFIGS:
        module = importlib.import_module(f"configs.{name}")
        for variant in getattr(module, "VARIANTS", (None,)):
            yield pytest.param(module, variant, id=f"{name}:{variant}" if variant else name)


def test_there_are_configs():
    assert {"quick", "tiny", "teapot", "bunny", "cep152"} <= set(CONFIGS)


@pytest.mark.parametrize("module,variant", _variants())
def test_config_has_the_default_fields_and_passes_the_check(module, variant):
    cfg = module.get_config() if variant is None else module.get_config(variant)
    assert _fields(cfg) == _fields(default.get_config())
    check_config(cfg)


def test_quick_single_head_is_the_same_recipe_with_the_original_method():
    best, single = quick.get_config(), quick.get_config("single_head")
    differing = {f for f in _fields(best) if _get(best, f) != _get(single, f)}
    search = {"search.use", "search.levels", "search.at_break"}  # the grid's spacing is the default's
    refined = {"refine.steps", "refine.relabel_every", "refine.relocate_every"}
    assert differing == {"model.num_heads", "train.steps"} | refined | search
    original = default.get_config()
    assert all(_get(single, f) == _get(original, f) for f in differing)


def test_quick_d8_is_the_same_recipe_with_the_pore_group_imposed():
    best, d8 = quick.get_config(), quick.get_config("d8")
    differing = {f for f in _fields(best) if _get(best, f) != _get(d8, f)}
    search = {"search.use", "search.levels", "search.at_break"}  # studied without the search, as before it
    refined = {"refine.steps", "refine.relabel_every", "refine.relocate_every"}  # d8 was studied without both
    assert differing == {"model.symmetry", "points.num"} | refined | search
    assert d8.points.num % 16 == 0 and d8.refine.relabel_every == 0  # an imposed group: nothing to break


@pytest.mark.parametrize("source", ["fits", "locs"])
def test_cep152_c9_imposes_the_ring_on_the_same_recipe(source):
    plain, c9 = cep152.get_config(source), cep152.get_config(f"{source}_c9")
    differing = {f for f in _fields(plain) if _get(plain, f) != _get(c9, f)}
    assert differing == {"model.symmetry", "points.num"}
    assert c9.model.symmetry == "c9" and c9.points.num % 9 == 0 and abs(c9.points.num - plain.points.num) < 9
    with pytest.raises(ValueError, match="unknown CEP152 variant"):
        cep152.get_config("c9")
