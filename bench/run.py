"""holly-jax benchmark: one command, figures printed and written as JSON for the machine it runs on.

    python bench/run.py [--quick] [--json bench/results-<device>.json]

Measures, in one process:
- renderer images/s, separable against dense, forward and forward+backward (128x128, 230 points, batch 20);
- training images/s at the original's headline settings (128x128, 230 points) for batch 20 and 32 (and 256
  and 1024 on a GPU), with compile time and the share of the CNN's FLOPs the step achieves
  (0.68 GFLOP per 128x128 image forward+backward, against the device's peak from its specification);
- the machine: CPU model and vector extensions, and its float32 matrix-product rate measured in the same
  run (bench/machine.py); training throughput is also given as a share of that rate;
- peak host memory and, where the backend reports it, peak device memory;
- before/after ratios of the step's optimisations, each measured here against the variant without it:
  donated state buffers, sigma as data (against sigma as a static argument, which recompiles as the
  schedule moves), no host synchronisation per step, bfloat16 convolutions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import machine  # noqa: E402
from bench import render as render_bench  # noqa: E402
from configs import default  # noqa: E402
from holly_jax import compiler, input_pipeline, simulate, train  # noqa: E402
from holly_jax.atomic import write_atomic  # noqa: E402
from holly_jax.setup import Setup, create_setup  # noqa: E402

CNN_GFLOP_PER_IMAGE = 0.68  # forward + backward at 128x128 (docs/method.md §2)
# Dense peak TFLOP/s from the vendors' specifications (float32 / bfloat16 tensor-core, no sparsity).
GPU_PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0)}


def device_peak_tflops(dtype: str) -> tuple[float, str]:
    """Peak FLOP/s of the default device for a compute dtype, and where the figure comes from."""
    kind = jax.devices()[0].device_kind
    for name, (fp32, bf16) in GPU_PEAK_TFLOPS.items():
        if name in kind:
            return (bf16 if dtype == "bfloat16" else fp32), f"{name} specification"
    # CPU: cores x clock x 32 float32 FLOP per cycle (two 8-wide AVX2 FMA units), an upper estimate
    mhz = 0.0
    try:
        mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    cores = os.cpu_count() or 1
    return cores * (mhz or 2500.0) * 1e6 * 32 / 1e12, f"estimate: {cores} cores x {mhz or 2500:.0f} MHz x 32 FLOP"


def training_setup(size: int, points: int, batch: int, dtype: str = "float32") -> Setup:
    cfg = default.get_config()
    cfg.data.object = str(Path(__file__).resolve().parents[1] / "objs" / "asymmetric.obj")
    cfg.data.image_height = cfg.data.image_width = size
    cfg.data.train_size = batch * 64
    cfg.data.test_size = cfg.data.valid_size = 0
    cfg.points.num = points
    cfg.model.dtype = dtype
    cfg.train.batch_size = batch
    cfg.train.epochs = 1
    return create_setup(cfg)


def time_training(
    setup: Setup, steps: int, donate: bool = True, sync_each_step: bool = False, compiler_options: dict | None = None
) -> dict:
    """Compile time and steady images/s of the jitted train step (compiled with ``compiler_options`` in place of
    the project's, where given)."""
    state = setup.replicate(train.create_state(setup, train.initial_points(setup)))
    fns = train.make_steps(setup)
    step_fn = fns.train
    if not donate or compiler_options is not None:
        step_fn = jax.jit(
            fns.train.__wrapped__,
            donate_argnums=0 if donate else (),
            compiler_options=compiler_options if compiler_options is not None else compiler.options(),
        )
    batch = next(input_pipeline.train_batches(setup, 0))
    start = time.perf_counter()
    state, metrics = step_fn(state, setup.ds.arrays, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, setup.ds.arrays, batch)
        if sync_each_step:
            float(metrics["train_loss"])
    jax.block_until_ready(metrics)
    return {"compile_s": compile_s, "images_per_s": steps * setup.batch_size / (time.perf_counter() - start)}


def time_convolution_choice(setup: Setup, steps: int, rounds: int = 3) -> dict[str, list[float]]:
    """Images/s of the train step compiled as the project compiles it ("xla": XLA's own convolutions,
    holly_jax/compiler.py) and with XLA's CPU default ("ynnpack"), interleaved ``rounds`` times: on a shared
    machine noise only ever slows a run, so compare the best of each."""
    times: dict[str, list[float]] = {"xla": [], "ynnpack": []}
    for _ in range(rounds):
        times["xla"].append(time_training(setup, steps)["images_per_s"])
        times["ynnpack"].append(time_training(setup, steps, compiler_options=compiler.XLA_DEFAULT_CPU)["images_per_s"])
    return times


def time_sigma_schedule(setup: Setup, steps: int, static: bool) -> float:
    """Images/s rendering targets while sigma changes every step: as data, or as a static argument."""
    sim, opts, size, b = setup.ds.arrays, setup.ds.opts, setup.ds.size, setup.batch_size
    idx = jnp.arange(b)
    if static:
        fn = jax.jit(
            lambda s: simulate.render_targets(sim.gt_Nx3, sim.table, idx, jnp.full((b,), s), opts, size),
            static_argnums=0,
        )
    else:
        fn = jax.jit(lambda s: simulate.render_targets(sim.gt_Nx3, sim.table, idx, jnp.full((b,), s), opts, size))
    sigmas = np.linspace(5.0, 1.0, steps + 1)
    jax.block_until_ready(fn(float(sigmas[0])))
    start = time.perf_counter()
    for s in sigmas[1:]:
        out = fn(float(s))
    jax.block_until_ready(out)
    return steps * b / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--json", help="write the figures here (default: bench/results-<device>.json)")
    args = parser.parse_args()
    steps = 5 if args.quick else 30
    gpu = jax.default_backend() == "gpu"
    dev = jax.devices()[0]
    path = Path(args.json or Path(__file__).parent / f"results-{dev.device_kind.replace(' ', '_')}.json")

    began = time.perf_counter()

    def save(part: str) -> None:  # after each part, so that a run cut short keeps what it measured
        write_atomic(path, (json.dumps(results, indent=2) + "\n").encode())
        print(f"{part} measured ({time.perf_counter() - began:.0f} s)", flush=True)

    results: dict = {
        "device": dev.device_kind,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": machine.cpu(),
        "matmul_gflops_float32": machine.matmul_gflops(),
    }

    results["training"] = {}
    for batch in (20, 32, 256, 1024) if gpu else (20, 32):
        setup = training_setup(128, 230, batch)
        figures = time_training(setup, steps)
        peak, source = device_peak_tflops("float32")
        figures["cnn_flop_share"] = figures["images_per_s"] * CNN_GFLOP_PER_IMAGE * 1e9 / (peak * 1e12)
        # against what this machine measurably multiplies (machine-independent, unlike images/s)
        figures["cnn_share_of_matmul_rate"] = (
            figures["images_per_s"] * CNN_GFLOP_PER_IMAGE / results["matmul_gflops_float32"]
        )
        figures["peak_tflops"], figures["peak_source"] = peak, source
        results["training"][f"batch_{batch}"] = figures
        save(f"training at batch {batch}")

    results["renderer"] = render_bench.measure(
        size=128, points=230, batch=20, seconds=0.5 if args.quick else 2.0, dense_backward=not gpu
    )
    save("renderer")

    batch = 256 if gpu else 20
    setup = training_setup(128, 230, batch)
    base = time_training(setup, steps)["images_per_s"]
    ratios = {
        "donated_state_vs_copied": base / time_training(setup, steps, donate=False)["images_per_s"],
        "no_host_sync_vs_sync_each_step": base / time_training(setup, steps, sync_each_step=True)["images_per_s"],
        "sigma_as_data_vs_static_recompiling": time_sigma_schedule(setup, steps, static=False)
        / time_sigma_schedule(setup, min(steps, 8), static=True),
    }
    bf16 = time_training(training_setup(128, 230, batch, "bfloat16"), steps)["images_per_s"]
    ratios["bfloat16_convs_vs_float32"] = bf16 / base
    if not gpu:
        choice = time_convolution_choice(setup, steps)
        ratios["xla_convs_vs_ynnpack_convs"] = max(choice["xla"]) / max(choice["ynnpack"])
        ratios["xla_convs_vs_ynnpack_convs_images_per_s"] = choice
    results["optimisation_ratios"] = {"batch": batch, **ratios}

    results["peak_host_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    results["peak_device_memory_mb"] = (stats or {}).get("peak_bytes_in_use", 0) / 2**20 or None

    print(json.dumps(results, indent=2))
    save("optimisation ratios")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
