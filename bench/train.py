"""Training throughput: images/s of the jitted train step (targets rendered inside it).

    python bench/train.py [--size 128] [--points 230] [--batch 20] [--steps 30] [--json out.json]

Defaults are the original's headline settings. Compile time is reported apart.
"""
from __future__ import annotations

import argparse
import json
import time

import jax

from configs import default
from holly_jax import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--points", type=int, default=230)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30, help="timed steps after compiling")
    parser.add_argument("--object", default="objs/asymmetric.obj")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    cfg = default.get_config()
    cfg.data.object = args.object
    cfg.data.image_height = cfg.data.image_width = args.size
    cfg.data.train_size = args.batch * 50
    cfg.data.test_size = cfg.data.valid_size = 0
    cfg.points.num = args.points
    cfg.train.batch_size = args.batch
    cfg.train.epochs = 1
    run = train.setup(cfg)
    state = train.create_state(run, train.initial_points(run))
    steps = train.make_steps(run)
    order = train.epoch_order(run, 0)

    start = time.perf_counter()
    state, metrics = steps.train(state, run.ds.data, order)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = steps.train(state, run.ds.data, order)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    results = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
               "size": args.size, "points": args.points, "batch": args.batch,
               "compile_s": compile_s, "train_images_per_s": args.steps * args.batch / seconds}
    for k, v in results.items():
        print(f"{k:<20}  {v:,.1f}" if isinstance(v, float) else f"{k:<20}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
