"""The global pose search's speed: candidate poses scored per second, and its working memory per chunk size.

    python bench/search.py [--json bench/results-search-<device>.json]

A batch of images of the asymmetric shape (200 of its points) at random poses, 64x64, is searched on the
coarse 15-degree grid (4,392 rotations) alone and with 4 local levels (8 kept per image, 27 turns each);
a candidate is one image drawn at one pose and scored. Chunk sizes trade memory for speed: the compiled
working memory is reported beside each. ``coarse_per_image`` times, in the same run, the coarse level as it
was before it drew each grid chunk once for the whole batch (every image drawn at every rotation at its own
centring), and ``coarse_speedup`` is the ratio. The machine (CPU model, vector extensions, measured float32
matrix-product rate) is recorded with the figures.
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
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import machine  # noqa: E402
from holly_jax import pointfile, render, search  # noqa: E402

SIZE, SIGMA, POINTS = (64, 64), 1.0, 200


def images(batch: int):
    x = pointfile.read_points(Path(__file__).resolve().parents[1] / "objs" / "asymmetric.obj").astype(np.float32)
    x = x[np.random.default_rng(0).choice(len(x), POINTS, replace=False)]
    points = jnp.asarray(x - x.mean(0))
    R = jnp.asarray(Rotation.random(batch, random_state=1).as_matrix(), jnp.float32)
    return points, R, render.render_poses(points, R, jnp.zeros((batch, 2)), jnp.full((batch,), SIGMA), SIZE)


def timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
    """Compile seconds, then the best of ``repeats`` run seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return compile_s, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", help="default: bench/results-search-<device>.json")
    args = parser.parse_args()
    points, R_true, targets = images(args.batch)
    grid = jnp.asarray(search.grid(15.0))
    results: dict = {**machine.describe(), "batch": args.batch, "size": SIZE, "points": POINTS, "grid": len(grid)}
    results["coarse"] = {}
    for chunk in (16, 64, 256):
        fn = jax.jit(lambda p, G, x, chunk=chunk: search.coarse(p, G, x, SIGMA, SIZE, "basic", 8, chunk))
        compile_s, run_s = timed(fn, points, grid, targets)
        memory = fn.lower(points, grid, targets).compile().memory_analysis()
        results["coarse"][f"chunk_{chunk}"] = {
            "compile_s": compile_s,
            "seconds": run_s,
            "candidates_per_s": args.batch * len(grid) / run_s,
            "working_memory_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
        }

    def per_image(p, G, x):  # the coarse level before: every image drawn at every rotation, chunk by chunk
        b = x.shape[0]

        def visit(best, R):
            here, _ = search._scores(p, jnp.broadcast_to(R, (b, *R.shape)), x, SIGMA, SIZE, "basic")
            return search._best(
                jnp.concatenate([best[0], here], 1),
                jnp.concatenate([best[1], jnp.broadcast_to(R, (b, *R.shape))], 1),
                8,
            ), None

        start = (jnp.full((b, 8), jnp.inf), jnp.broadcast_to(G[:1], (b, 8, 3, 3)))
        return jax.lax.scan(visit, start, G.reshape(-1, 64, 3, 3))[0]

    usable = grid[: len(grid) // 64 * 64]
    compile_s, run_s = timed(jax.jit(per_image), points, usable, targets)
    results["coarse_per_image"] = {
        "rotations": len(usable),
        "compile_s": compile_s,
        "seconds": run_s,
        "candidates_per_s": args.batch * len(usable) / run_s,
    }
    shared, alone = results["coarse"]["chunk_64"], results["coarse_per_image"]
    results["coarse_speedup"] = shared["candidates_per_s"] / alone["candidates_per_s"]
    settings = search.Search(15.0, 4, 8, 64)
    fn = jax.jit(lambda p, x: search.search(p, x, SIGMA, SIZE, "basic", settings))
    compile_s, run_s = timed(fn, points, targets)
    found = fn(points, targets)
    cos = (np.einsum("bij,bij->b", np.asarray(found.R_Bx3x3), np.asarray(R_true)) - 1) / 2
    candidates = args.batch * (len(grid) + settings.levels * settings.keep * 27)
    results["full_search"] = {
        "levels": settings.levels,
        "keep": settings.keep,
        "compile_s": compile_s,
        "seconds": run_s,
        "images_per_s": args.batch / run_s,
        "candidates_per_s": candidates / run_s,
        "error_deg_max": float(np.degrees(np.arccos(np.clip(cos, -1, 1))).max()),
    }
    # the search's floating-point work against the matrix-product rate: the grid drawn once per batch and
    # compared with every image (subtract, absolute value, add per pixel), the local candidates drawn one by one
    draw = 2 * POINTS * SIZE[0] * SIZE[1] + 4 * POINTS * (SIZE[0] + SIZE[1])
    local = args.batch * (settings.levels * settings.keep * 27 + settings.keep)
    flop = (len(grid) + local) * draw + args.batch * len(grid) * 3 * SIZE[0] * SIZE[1]
    results["full_search"]["share_of_matmul_rate"] = flop / run_s / 1e9 / results["matmul_gflops_float32"]
    print(json.dumps(results, indent=2))
    kind = results["device"].replace(" ", "_") if jax.default_backend() == "gpu" else "cpu"
    path = Path(args.json or Path(__file__).parent / f"results-search-{kind}.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
