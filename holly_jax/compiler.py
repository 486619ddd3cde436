"""How the steps are compiled: ``jit`` is ``jax.jit`` with this project's XLA options for the backend.

On the CPU, jaxlib 0.10's XLA hands convolutions to YNNPACK by default. Its convolutions are slower than
XLA's own (Eigen) ones for this network, most of all on the middle layers (conv2 to conv4): on our
2-core AMD EPYC the network's forward and backward run about 1.3x faster without them (``python
bench/profile.py`` times both ways in one run). So CPU steps are compiled with YNNPACK kept for matrix
products and reductions only. The numbers are the same up to float32 rounding (another summation order).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_TYPE = "LIBRARY_FUSION_TYPE_"
# XLA's default list in jaxlib 0.10 (dots, convolutions, reductions), kept for the benchmark's comparison.
XLA_DEFAULT_CPU = {_YNN: f"{_TYPE}INDIVIDUAL_DOT,{_TYPE}INDIVIDUAL_CONVOLUTION,{_TYPE}REDUCE"}
CPU = {_YNN: f"{_TYPE}INDIVIDUAL_DOT,{_TYPE}REDUCE"}


@functools.cache
def options() -> dict[str, Any] | None:
    """The compiler options for the default backend, or None where XLA's defaults stand (GPU, or an XLA that
    does not know the option: a tiny compile tells)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU).lower(jnp.zeros(())).compile()
    except jax.errors.JaxRuntimeError:
        return None
    return CPU


def jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)`` compiled with ``options()``."""
    return jax.jit(fn, compiler_options=options(), **kwargs)
