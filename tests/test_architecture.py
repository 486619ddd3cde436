"""Imports go one way: every holly_jax module imports only modules below it in LAYERS, lazy imports included.

A new module must be placed in the list; a phase that starts importing the
pipeline above it, or training that starts importing refinement or
evaluation, fails here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "holly_jax"

# Top to bottom: the orchestration, the phases, what the phases share, data, then the method and its files.
# fmt: off
LAYERS = [
    "sweep", "pipeline", "infer",
    "evaluate", "halfsets", "workdirs", "refine", "train",
    "loop", "forward", "optim", "checkpoints", "input_pipeline", "setup",
    "data", "simulate", "locsim", "exports", "locs", "fits",
    "shapes", "fsc", "volume", "outputs", "symmetry", "plots", "metrics", "poses", "pointfile", "model", "search",
    "render", "rotations", "loss", "schedule", "points", "salts", "atomic", "faults", "errors", "hosts", "compiler",
]
# fmt: on
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(name: str) -> set[str]:
    """The holly_jax modules a module imports anywhere in its text (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "holly_jax":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("holly_jax."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("holly_jax.")}
    return found - {name}


def test_every_module_has_a_layer():
    assert sorted(LAYERS) == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_only_modules_below_it(name):
    upward = sorted(m for m in imports_of(name) if LAYERS.index(m) <= LAYERS.index(name))
    assert not upward, f"holly_jax.{name} imports {upward}, which are not below it"


def test_the_checker_sees_lazy_and_dotted_imports(tmp_path, monkeypatch):
    (tmp_path / "low.py").write_text("def f():\n    from holly_jax import high\n    import holly_jax.other.x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    assert imports_of("low") == {"high", "other"}
