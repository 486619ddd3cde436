"""Execute experiment notebooks at a scale and save them with their outputs.

    python experiments/execute.py experiments/robustness.ipynb [...] --scale=cpu

The scale reaches the notebook as the HOLLY_SCALE environment variable (its
first code cell reads it): "tiny" runs in seconds (the tests execute every
notebook so), "cpu" and "quick" are the documented CPU scales, "full" is for a
GPU. Runs go to HOLLY_RUNS (default runs/experiments); a finished run is read
back, so executing a notebook again only redraws it. The notebook is written
back in place (atomically) unless --no-save.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from holly_jax.atomic import write_atomic  # noqa: E402 (after the path set-up)


def execute(
    path: str | Path, scale: str, runs: str | Path | None = None, save: bool = True, timeout: int = 6 * 3600
) -> nbformat.NotebookNode:
    """Run every cell of a notebook in a fresh kernel (cwd: the repository); a failing cell raises."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    env = {"HOLLY_SCALE": scale}
    if runs is not None:
        env["HOLLY_RUNS"] = str(Path(runs).resolve())
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if save:
        write_atomic(path, nbformat.writes(nb).encode())
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--scale", default="cpu", choices=("tiny", "cpu", "quick", "full"))
    parser.add_argument("--runs", default=None, help="where the runs go (default runs/experiments)")
    parser.add_argument("--no-save", action="store_true", help="do not write the executed notebook back")
    args = parser.parse_args()
    for name in args.notebooks:
        start = time.perf_counter()
        try:
            execute(name, args.scale, args.runs, save=not args.no_save)
        except CellExecutionError as e:
            last = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[-1]  # no terminal colours
            print(f"error: {name}: a cell failed: {last}", file=sys.stderr)
            return 1
        except FileNotFoundError:
            print(f"error: {name}: notebook not found", file=sys.stderr)
            return 1
        print(f"{name}: executed at scale {args.scale} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
