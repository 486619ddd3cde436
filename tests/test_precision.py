"""Pose geometry in full float32 on every backend.

JAX's default precision lets a GPU multiply float32 matrices on its TF32 tensor cores (10-bit mantissa).
For the network's convolutions that is speed at no cost, but a rotation composed or a point projected that
way is off by about 1e-3: rotations stop being orthonormal (a few degrees of apparent error near the
identity) and the search's finest levels lose their meaning. Every product of the pose geometry therefore
asks for HIGHEST precision. On a CPU both precisions give the same numbers, so these tests read the traced
programs: every matrix product outside the network must carry Precision.HIGHEST.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation
from test_refine import _config

from holly_jax import forward, loss, refine, render, rotations, search, train
from holly_jax.setup import create_setup

PRODUCTS = ("dot_general", "conv_general_dilated")


def _products(jaxpr) -> list[tuple[str, object]]:
    """(primitive, precision) of every matrix product or convolution in a traced program, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in PRODUCTS:
            found.append((eqn.primitive.name, eqn.params.get("precision")))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_products(inner))
    return found


def _not_highest(fn, *args) -> list[tuple[str, object]]:
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    traced = fn.trace(*args).jaxpr if hasattr(fn, "trace") else jax.make_jaxpr(fn)(*args)  # a compiled step
    return [p for p in _products(traced.jaxpr) if p[1] != highest]


def _setup(**overrides):
    return create_setup(_config(**overrides))  # the refinement tests' tiny config


def test_the_helper_sees_default_precision_products_inside_scans():
    def body(c, R):
        return c, R @ R

    fn = lambda Rs: jax.lax.scan(body, 0.0, Rs)[1]  # noqa: E731
    assert _not_highest(fn, jnp.ones((4, 3, 3))) == [("dot_general", None)]


def test_rotations_rendering_and_the_search_multiply_in_full_precision():
    R = jnp.asarray(Rotation.random(4, random_state=0).as_matrix(), jnp.float32)
    points = jnp.asarray(np.random.default_rng(0).normal(size=(30, 3)), jnp.float32)
    targets = render.render_poses(points, R, jnp.zeros((4, 2)), jnp.ones(4), (24, 24))
    settings = search.Search(60.0, 2, 2, 16)
    assert _not_highest(lambda x: search.search(points, x, 1.0, (24, 24), "basic", settings), targets) == []
    assert _not_highest(lambda r: jax.vmap(rotations.axis_angle_to_matrix)(r), jnp.ones((4, 3))) == []
    assert _not_highest(jax.vmap(rotations.geodesic_angle), R, R) == []
    assert _not_highest(jax.vmap(rotations.sixd_to_matrix), jnp.ones((4, 6))) == []
    assert _not_highest(lambda a, b: rotations.slerp(a, b, 0.3), jnp.ones(4) / 2, jnp.ones(4) / 2) == []


def test_a_refinement_step_multiplies_in_full_precision():
    setup = _setup(**{"refine.relocate_every": 3, "refine.trim": 0.25, "refine.relabel_every": 4})
    ph = refine.phase(setup)
    state = refine.initial_state(setup, train.create_state(setup, train.initial_points(setup)), ph)
    items = np.arange(8)
    step = refine.make_step(setup, ph)
    assert _not_highest(step, state, setup.ds.arrays, jnp.arange(8), jnp.asarray(items)) == []


def test_the_training_forward_adds_no_reduced_precision_product_to_the_networks():
    """With an imposed group, four heads and the symmetrised loss, the products that may use TF32 in the
    training forward are exactly the network's own (its convolutions and dense layers)."""
    setup = _setup(**{"model.symmetry": "c2", "model.num_heads": 4, "model.symmetrised_loss": True})
    state = train.create_state(setup, train.initial_points(setup))
    targets = jnp.ones((8, *setup.ds.size), jnp.float32)
    variables = {"params": state.params["net"], "batch_stats": state.batch_stats}

    def network(x):
        return setup.net.apply(
            variables, loss.normalise(x, setup.cfg.train.normalise), train=True, mutable=["batch_stats"]
        )

    def predicted(x):
        return forward.predict(setup, state.params, state.batch_stats, x, jnp.float32(1.0), train=True).loss_B

    own = _not_highest(network, targets)
    assert own  # the network's products keep the backend's default
    assert sorted(map(str, _not_highest(predicted, targets))) == sorted(map(str, own))
