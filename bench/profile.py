"""Where the 128x128 training step's time goes: each convolution's forward and backward pass apart.

    python bench/profile.py [--batch 32] [--json bench/results-profile-<device>.json]

Times the whole jitted train step, compiled as the project compiles it (holly_jax/compiler.py) and, on
the CPU, with XLA's default of handing convolutions to YNNPACK (interleaved, the better of two of each).
Then each of the network's ten convolutions on its own (forward and both gradients, at the shape it has
in the network) three ways: XLA's convolution as the project compiles it (what the model uses), the same
under XLA's default (YNNPACK), and the same convolution as patches x one matrix product (the patches
gathered by strided slices). Each figure is also given as GFLOP/s and as a share of this machine's
measured float32 matrix-product rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import machine  # noqa: E402
from bench.run import CNN_GFLOP_PER_IMAGE, time_convolution_choice, time_training, training_setup  # noqa: E402
from holly_jax import compiler, model  # noqa: E402

DIMS = ("NHWC", "HWIO", "NHWC")


def patches_conv(x, w, stride: int, pad: int):
    """A convolution as one matrix product: the kh x kw shifted, strided views of the padded input side by
    side (N x Ho x Wo x kh kw C) times the kernel as a (kh kw C) x O matrix."""
    kh, kw, c, o = w.shape
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    views = [
        lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(views, axis=-1) @ w.reshape(kh * kw * c, o)


def xla_conv(x, w, stride: int, pad: int):
    return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=DIMS)


def seconds(fn, *args, reps: int = 10) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps


def layers(batch: int, size: int = 128) -> list[dict]:
    rng = np.random.default_rng(0)
    rows, cin = [], 1
    for name, cout, k, stride, pad in model.LAYERS:
        out = (size + 2 * pad - k) // stride + 1
        x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
        gflop = 3 * 2 * batch * out * out * cout * k * k * cin / 1e9  # forward, and the two gradients
        row = {"layer": name, "input": [size, size, cin], "output": [out, out, cout], "kernel": k, "stride": stride}
        ways = [("xla", xla_conv, compiler.options()), ("patches", patches_conv, compiler.options())]
        if jax.default_backend() == "cpu":
            ways.insert(1, ("ynnpack", xla_conv, compiler.XLA_DEFAULT_CPU))
        for label, conv, options in ways:
            grad = jax.jit(
                jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w, stride, pad) ** 2), argnums=(0, 1)),
                compiler_options=options,
            )
            s = seconds(grad, x, w)
            row[f"{label}_ms"], row[f"{label}_gflops"] = s * 1e3, gflop / s
        rows.append(row)
        size, cin = out, cout
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", help="write the figures here (default: bench/results-profile-<device>.json)")
    args = parser.parse_args()
    rate = machine.matmul_gflops()
    setup = training_setup(128, 230, args.batch)
    if jax.default_backend() == "cpu":
        choice = time_convolution_choice(setup, 20, rounds=2)
        ours, ynn = choice["xla"], choice["ynnpack"]
    else:
        ours, ynn = [time_training(setup, 20)["images_per_s"]], []
    step = {"images_per_s": max(ours)}
    step_ms = args.batch / step["images_per_s"] * 1e3
    rows = layers(args.batch)
    conv_ms = sum(r["xla_ms"] for r in rows)
    best_ms = sum(min(r["xla_ms"], r["patches_ms"]) for r in rows)
    print(f"{machine.cpu()}: float32 matrix product {rate:.0f} GFLOP/s")
    print(f"train step, batch {args.batch}: {step_ms:.0f} ms ({step['images_per_s']:.1f} images/s)")
    if ynn:
        print(f"  with XLA's default (YNNPACK convolutions): {max(ynn):.1f} images/s; ratio {max(ours) / max(ynn):.2f}")
    print(
        f"{'layer':8} {'in':>12} {'out':>12} {'XLA ms':>8} {'GFLOP/s':>8} {'share':>6}"
        f" {'YNNPACK ms':>11} {'patches ms':>11} {'GFLOP/s':>8}"
    )
    for r in rows:
        print(
            f"{r['layer']:8} {'x'.join(map(str, r['input'])):>12} {'x'.join(map(str, r['output'])):>12} "
            f"{r['xla_ms']:8.1f} {r['xla_gflops']:8.1f} {r['xla_gflops'] / rate:6.0%} "
            f"{r.get('ynnpack_ms', float('nan')):11.1f} {r['patches_ms']:11.1f} {r['patches_gflops']:8.1f}"
        )
    print(
        f"convolutions: {conv_ms:.0f} ms of the step's {step_ms:.0f} ms ({conv_ms / step_ms:.0%}); "
        f"each layer its faster way: {best_ms:.0f} ms"
    )
    results = {
        "machine": machine.cpu(),
        "device": jax.devices()[0].device_kind,
        "matmul_gflops_float32": rate,
        "batch": args.batch,
        "step_ms": step_ms,
        "images_per_s": step["images_per_s"],
        "images_per_s_ynnpack_convolutions": max(ynn) if ynn else None,
        "cnn_share_of_matmul_rate": step["images_per_s"] * CNN_GFLOP_PER_IMAGE / rate,
        "convolutions_ms": conv_ms,
        "convolutions_each_faster_way_ms": best_ms,
        "layers": rows,
    }
    path = Path(args.json or Path(__file__).parent / f"results-profile-{jax.default_backend()}.json")
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
