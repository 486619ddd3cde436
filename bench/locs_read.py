"""Reading a large ThunderSTORM CSV: seconds and peak memory, in a fresh process per measurement.

    python bench/locs_read.py [--rows 10000000] [--json bench/results-locs-cpu.json]

Writes a CSV of ``rows`` localisations in Picasso's export_thunderstorm layout plus a group column (11
columns), then reads it in a child process with ``locs.read`` and reports the wall time and the child's
peak resident memory (ru_maxrss) over the same child's memory after importing holly_jax. The issue's
target: 10 million rows under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import machine  # noqa: E402

CHILD = """
import resource, sys, time
from holly_jax import locs
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
table = locs.read(sys.argv[1])
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(table.x_nm), seconds, base, peak)
"""


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        df = pd.DataFrame(
            {
                "id": np.arange(start, start + n),
                "frame": rng.integers(0, 50000, n),
                "x [nm]": rng.uniform(0, 40000, n),
                "y [nm]": rng.uniform(0, 40000, n),
                "sigma [nm]": rng.normal(130, 10, n),
                "intensity [photon]": rng.exponential(1500, n),
                "offset [photon]": rng.normal(20, 2, n),
                "bkgstd [photon]": rng.normal(5, 1, n),
                "uncertainty_xy [nm]": rng.normal(8, 1, n),
                "group": start // 1000 + np.arange(n) // 1000,
                "detections": rng.integers(1, 4, n),
            }
        )
        df.to_csv(path, mode="a" if start else "w", header=not start, index=False, float_format="%.3f")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "locs.csv"
        t = time.perf_counter()
        write_csv(path, args.rows)
        write_s = time.perf_counter() - t
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
        n, seconds, base_kb, peak_kb = out.stdout.split()
        result = {
            "machine": machine.cpu(),
            "rows": int(n),
            "file_mb": path.stat().st_size / 1e6,
            "write_s": write_s,
            "read_s": float(seconds),
            "rows_per_s": int(n) / float(seconds),
            "peak_rss_mb": int(peak_kb) / 1024,
            "peak_rss_over_imports_mb": (int(peak_kb) - int(base_kb)) / 1024,
        }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
