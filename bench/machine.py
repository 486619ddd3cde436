"""What a benchmark ran on: the CPU model and its vector extensions, and the float32 matrix-product rate
measured here, so a figure can be read as a share of what the machine can multiply."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp


def cpu() -> str:
    """CPU model and vector extensions, from /proc/cpuinfo where there is one."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = [f for f in ("avx2", "avx512f", "fma") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {'/'.join(vector) or 'no AVX2'}"


def matmul_gflops(n: int = 2048, seconds: float = 1.0) -> float:
    """float32 GFLOP/s of an n x n matrix product on the default device (jitted, after one warm-up)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    jax.block_until_ready(product(a))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = product(a)
        done += 1
    jax.block_until_ready(out)
    return 2 * n**3 * done / (time.perf_counter() - start) / 1e9


def describe() -> dict:
    return {"machine": cpu(), "device": jax.devices()[0].device_kind, "matmul_gflops_float32": matmul_gflops()}
