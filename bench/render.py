"""Renderer throughput: the separable splat against the dense form, in one run.

    python bench/render.py [--size 128] [--points 230] [--batch 20] [--json out.json]

Prints images/s forward and forward+backward for both forms and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from holly_jax import render, rotations


def dense_render(points_Nx3, R_3x3, t_2, sigma, size):
    """The O(N H W) form of docs/method.md §1, for comparison only."""
    h, w = size
    px, py = render.project(points_Nx3, R_3x3, t_2, size)
    ys, xs = jnp.mgrid[0:h, 0:w]
    d2 = (px[:, None, None] - xs) ** 2 + (py[:, None, None] - ys) ** 2
    return jnp.sum(jnp.exp(-d2 / (2 * sigma**2)), axis=0) / (2 * jnp.pi * sigma**2)


def _time(fn, args, min_seconds):
    jax.block_until_ready(fn(*args))  # compile
    calls, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(*args))
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return elapsed / calls


def measure(
    size: int = 128, points: int = 230, batch: int = 20, seconds: float = 2.0, dense_backward: bool = True
) -> dict:
    """Images/s forward and forward+backward of both forms, and their ratios. ``dense_backward=False`` leaves out
    the dense form's forward+backward: on a GPU (H200, jax 0.11.2) XLA did not finish compiling it in 100 s."""
    hw = (size, size)
    key = jax.random.key(0)
    pts = jax.random.uniform(key, (points, 3), minval=-1.5, maxval=1.5)
    R = jax.vmap(rotations.random_rotation)(jax.random.split(key, batch))
    t = jnp.zeros((batch, 2))
    sigma = jnp.full((batch,), 2.0)
    target = jnp.zeros((batch, *hw))
    separable = lambda p, R, t, s: render.render_poses(p, R, t, s, hw)
    dense = lambda p, R, t, s: jax.vmap(dense_render, in_axes=(None, 0, 0, 0, None))(p, R, t, s, hw)
    results = {"size": size, "points": points, "batch": batch}
    for name, fn in (("separable", separable), ("dense", dense)):
        fwd = jax.jit(fn)
        grad = jax.jit(
            jax.grad(lambda p, R, t, s, fn=fn: jnp.sum(jnp.abs(fn(p, R, t, s) - target)), argnums=(0, 1, 2, 3))
        )
        for mode, f in (("forward", fwd), ("forward_backward", grad)):
            if name == "dense" and mode == "forward_backward" and not dense_backward:
                continue
            results[f"{name}_{mode}_images_per_s"] = batch / _time(f, (pts, R, t, sigma), seconds)
    for mode in ("forward", "forward_backward") if dense_backward else ("forward",):
        results[f"ratio_{mode}"] = results[f"separable_{mode}_images_per_s"] / results[f"dense_{mode}_images_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--points", type=int, default=230)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing window per measurement")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        **measure(args.size, args.points, args.batch, args.seconds),
    }
    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  {v:,.1f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
