"""Two processes on this machine train as one run: JAX's distributed runtime, gloo collectives on the CPU.

Each process sees one CPU device; the reference is one process with two CPU devices and the same global
batch, so the arithmetic (and its all-reduce) is the same and the results must agree to float32 rounding.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from holly_jax import pointfile

REPO = Path(__file__).resolve().parents[1]
PER_PROCESS = ["--config=configs/tiny.py", "--config.train.batch_size=8", "--config.train.log_every=4"]
SAVE = ["--config.train.save_every=4", "--config.train.report=false"]


def _env(devices: int = 1, **extra):
    """The environment of a launch: ``devices`` CPU devices, no fault injection, the tests' other XLA flags."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOLLY_KILL_AT", "HOLLY_RAISE_AT")}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    flags += [f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else []
    return {**env, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu", **extra}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two(workdir: Path, *flags: str, env0: dict | None = None, timeout: float = 300):
    """Both processes of a 2-process run; returns [(status, stdout, stderr, seconds)] for processes 0 and 1."""
    port, start = _port(), time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "launch.py", "--distributed", f"--coordinator_address=localhost:{port}"]
            + ["--num_processes=2", f"--process_id={i}", f"--workdir={workdir}", *PER_PROCESS, *flags],
            cwd=REPO,
            env=_env(**(env0 or {})) if i == 0 else _env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    ended = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        ended.append((p.returncode, out, err, time.monotonic() - start))
    return ended


def _records(workdir: Path) -> list[dict]:
    keep = ("step", "train_loss", "test_loss", "sigma_out", "grad_norm")
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, lines)]


def _files(workdir: Path) -> set[str]:
    """The files a run wrote; a checkpoint (Orbax's own layout, per process) and TensorBoard's files (named by
    time and host) stand as their folders."""
    files = set()
    for p in workdir.rglob("*"):
        if p.is_file():
            parts = p.relative_to(workdir).parts
            files.add("/".join(parts[: {"checkpoints": 2, "tb": 1}.get(parts[0], len(parts))]))
    return files


def test_two_processes_killed_and_resumed_end_as_one_process_with_their_devices(tmp_path):
    one = tmp_path / "one"
    ref = subprocess.run(
        [sys.executable, "launch.py", f"--workdir={one}", *PER_PROCESS, *SAVE, "--config.train.batch_size=16"],
        cwd=REPO,
        env=_env(devices=2),
        capture_output=True,
        text=True,
    )
    assert ref.returncode == 0, ref.stderr
    assert "batch 16 over 2 device(s)" in ref.stdout

    two = tmp_path / "two"
    # process 0, the coordinator and the one that writes, dies in its 10th step (after the checkpoint of step
    # 8): process 1 must stop on its own, in one line, well before the test's timeout
    kill = {"HOLLY_KILL_AT": "training_step:10"}
    (s0, _, e0, _), (s1, out1, e1, _) = _two(two, *SAVE, "--distributed_timeout=20", env0=kill, timeout=240)
    assert s0 == 1 and e0.count("\n") == 1 and "ended by SIGKILL" in e0, e0
    assert s1 == 1 and e1.count("\n") == 1, e1
    assert e1.startswith("error: ") and "another process of this run stopped" in e1
    assert "resume from the last checkpoint" in e1
    assert out1 == ""  # process 1 prints nothing: process 0 reports the run

    (s0, out0, e0, _), (s1, out1, e1, _) = _two(two, *SAVE, "--config.train.report=true")  # both again: resumes
    assert (s0, s1) == (0, 0), e0 + e1
    assert "batch 16 over 2 device(s)" in out0 and "resuming at step 8" in out0
    assert out1 == "" and e1 == ""  # only process 0 prints and writes
    assert _records(two) == _records(one)  # the same losses at every logged step, the killed ones included
    np.testing.assert_allclose(
        pointfile.read_points(two / "final.ply"), pointfile.read_points(one / "final.ply"), rtol=0, atol=1e-6
    )
    evaluated = {
        "report.html",
        "eval/metrics.json",
        "eval/poses.csv",
        "eval/cloud.png",
    }  # process 0 evaluated the run alone
    assert _files(two) - _files(one) >= evaluated
    assert {f for f in _files(two) if not f.startswith("eval/") and f != "report.html"} == _files(one)
    assert np.isfinite(json.loads((two / "eval" / "metrics.json").read_text())["chamfer"])


def test_a_process_that_cannot_join_the_others_ends_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--distributed", f"--coordinator_address=localhost:{_port()}"]
        + ["--num_processes=2", "--process_id=1", "--distributed_timeout=2", f"--workdir={tmp_path / 'w'}"]
        + PER_PROCESS,
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,  # no process 0 ever comes: it must give up on its own
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "could not join the other processes" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "w").exists()
