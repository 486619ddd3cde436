"""Data parallel training over 8 simulated CPU devices gives the one-device state."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_eight_devices_match_one_device():
    flags = os.environ.get("XLA_FLAGS", "")  # the tests' flags (conftest.py) and eight CPU devices
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_check.py")], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == [1, 8]
    # the same gradient up to float summation order, the same losses and points step by step: the first
    # step's loss to float32 rounding; after it Adam turns rounding-sized gradients (a conv bias before
    # BatchNorm) into lr-sized moves, so later losses drift by about 1e-4 (a wrong all-reduce: by 1e-1)
    assert r["gradient_rel"] < 1e-4
    assert r["loss"][1][0] == pytest.approx(r["loss"][0][0], rel=1e-5)
    assert r["loss"][1] == pytest.approx(r["loss"][0], rel=5e-4)
    assert r["test_loss"][1] == pytest.approx(r["test_loss"][0], rel=1e-3)
    assert r["points_rel"] < 1e-4
    # Adam moves a weight by about lr per step whatever its gradient's size, so a weight whose gradient is
    # only rounding noise (a conv bias before BatchNorm) may differ by up to 2 lr per step, never more
    assert r["net_max_abs"] <= r["adam_bound"] and r["batch_stats_max_abs"] <= r["adam_bound"]
