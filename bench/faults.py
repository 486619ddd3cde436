"""Randomised kill-and-resume: a tiny refined run killed with SIGKILL at random moments until it finishes.

    python bench/faults.py [--kills 20] [--seed 0] [--root runs/bench_faults]

The uninterrupted run is timed first. Then a chain: one workdir is started
again and again, each process killed after a random share of that time (so
kills land anywhere: compiling, stepping, checkpointing, writing files,
refining, evaluating), until a process finishes on its own. Its result must
equal the uninterrupted run bit for bit: final.ply, every weight of the
training and refinement checkpoints, and metrics.jsonl (wall-clock rates
aside). Chains follow one another until ``--kills`` processes have been
killed. The deterministic version with named kill points is
tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from holly_jax import workdirs  # noqa: E402

ARGS = [
    "--config=configs/tiny.py",
    "--config.train.save_every=8",
    "--config.refine.steps=12",
    "--config.refine.images=32",
    "--config.refine.batch_size=8",
]


def launch(workdir: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "launch.py"), f"--workdir={workdir}", *ARGS]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def same_run(a: Path, b: Path) -> list[str]:
    """The ways run b differs from run a (empty: none)."""
    problems = []
    if (a / "final.ply").read_bytes() != (b / "final.ply").read_bytes():
        problems.append("final.ply")
    sa, sb = workdirs.load(a), workdirs.load(b)
    for name, x, y in (("training state", sa.state, sb.state), ("refinement state", sa.refined, sb.refined)):
        if not all(
            np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(jax.tree.leaves(x), jax.tree.leaves(y))
        ):
            problems.append(name)

    def records(w):
        lines = (w / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]

    if records(a) != records(b):
        problems.append("metrics.jsonl")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="processes to kill before letting one finish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs/bench_faults")
    args = parser.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(args.seed)

    start = time.perf_counter()
    proc = launch(root / "whole")
    if proc.wait() != 0:
        sys.exit(f"the uninterrupted run failed: {proc.stderr.read().decode()[-2000:]}")
    whole_s = time.perf_counter() - start

    chains = []
    while sum(len(c["killed_after_s"]) for c in chains) < args.kills:
        workdir = root / f"killed{len(chains)}"
        killed_at = []
        while True:
            proc = launch(workdir)
            delay = rng.uniform(0.05, 1.0) * whole_s
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at.append(round(delay, 1))
                continue
            if proc.returncode != 0:
                sys.exit(f"a resumed run failed: {proc.stderr.read().decode()[-2000:]}")
            break  # finished on its own
        chains.append({"killed_after_s": killed_at, "differences": same_run(root / "whole", workdir)})
    print(json.dumps({"uninterrupted_s": round(whole_s, 1), "chains": chains}, indent=2))
    sys.exit(1 if any(c["differences"] for c in chains) else 0)


if __name__ == "__main__":
    main()
