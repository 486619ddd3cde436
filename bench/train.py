"""Training throughput of the jitted step (targets rendered inside it), with compile time apart.

    python bench/train.py [--size 128] [--points 230] [--batch 20] [--steps 30] [--dtype float32]

Defaults are the original's headline settings. bench/run.py runs this among the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import time_training, training_setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--points", type=int, default=230)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30, help="timed steps after compiling")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    figures = time_training(training_setup(args.size, args.points, args.batch, args.dtype), args.steps)
    print(
        f"{jax.devices()[0].device_kind}, {args.size}x{args.size}, {args.points} points, batch {args.batch}, "
        f"{args.dtype}: {figures['images_per_s']:,.1f} training images/s (compile {figures['compile_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
