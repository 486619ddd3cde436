"""Data parallel training over 8 simulated CPU devices gives the one-device state."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_eight_devices_match_one_device():
    # XLA's default optimisation (not the tests' level 0, conftest.py): the tolerances below are its rounding
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_check.py")], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == [1, 8]
    # the same gradient up to float summation order, the same losses and points step by step
    assert r["gradient_rel"] < 1e-4
    assert r["loss"][1] == pytest.approx(r["loss"][0], rel=1e-4)
    assert r["test_loss"][1] == pytest.approx(r["test_loss"][0], rel=1e-3)
    assert r["points_rel"] < 1e-4
    # Adam moves a weight by about lr per step whatever its gradient's size, so a weight whose gradient is
    # only rounding noise (a conv bias before BatchNorm) may differ by up to 2 lr per step, never more
    assert r["net_max_abs"] <= r["adam_bound"] and r["batch_stats_max_abs"] <= r["adam_bound"]
