"""Faults survived: a run killed at nine moments ends as an uninterrupted one; damaged checkpoints, a full disk,
a second run on the same workdir, a changed config and an unexpected exception each end in one line."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from holly_jax import checkpoints, pipeline, train, workdirs
from holly_jax.errors import InputError
from holly_jax.setup import create_setup

REPO = Path(__file__).resolve().parents[1]
OBJ = REPO / "objs" / "asymmetric.obj"
# tiny, refined, a checkpoint every 8 steps: training saves at 8, 16, 24, 32; refinement at 8, 12
OVERRIDES = [
    f"--config.data.object={OBJ}",
    "--config.train.save_every=8",
    "--config.refine.steps=12",
    "--config.refine.images=32",
    "--config.refine.batch_size=8",
]
# Each process of the chain is killed at the N-th pass of a named point after its start (holly_jax.faults);
# ":MS" kills MS milliseconds later from another thread, in the middle of what follows.
KILLS = [
    "training_step:3",  # before the first checkpoint: the next process starts again
    "metrics:1",  # half of the step-8 line written
    "file_write:6",  # shape_e0_s8.ply written under its temporary name, not yet renamed (checkpoint 8 saved)
    "pictures:1",  # between the curves and the input/output pairs at step 16
    "checkpoint:1:30",  # 30 ms into writing checkpoint 24
    "refinement_step:3",
    "checkpoint:1:20",  # 20 ms into writing refinement checkpoint 8
    "evaluation:1",  # the final evaluation, metrics computed, nothing written
    "file_write:4",  # final.ply rewritten (the run is otherwise complete)
]


def _command(workdir, *extra):
    return [
        sys.executable,
        str(REPO / "launch.py"),
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        *OVERRIDES,
        *extra,
    ]


def _launch(workdir, *extra, env=None, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(_command(workdir, *extra), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _config():
    cfg = tiny.get_config()
    cfg.data.object = str(OBJ)
    cfg.train.save_every = 8
    cfg.refine.steps, cfg.refine.images, cfg.refine.batch_size = 12, 32, 8
    return cfg


def _states(workdir):
    saved = workdirs.load(workdir)
    return saved.state, saved.refined


def _records(workdir):
    """metrics.jsonl without the wall-clock rates."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def _assert_same_run(a, b):
    assert (a / "final.ply").read_bytes() == (b / "final.ply").read_bytes()
    (state_a, refined_a), (state_b, refined_b) = _states(a), _states(b)
    for x, y in zip(
        jax.tree.leaves((state_a.params, state_a.batch_stats, state_a.opt_state)),
        jax.tree.leaves((state_b.params, state_b.batch_stats, state_b.opt_state)),
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(refined_a), jax.tree.leaves(refined_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    records = _records(b)
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # de-duplicated
    assert records == _records(a)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults") / "whole"
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir


def test_a_run_killed_at_nine_moments_ends_as_an_uninterrupted_one(whole, tmp_path):
    workdir = tmp_path / "killed"
    for kill in KILLS:
        proc = _launch(workdir, env={"HOLLY_KILL_AT": kill})
        assert proc.returncode == -signal.SIGKILL, f"{kill}: not killed (exit {proc.returncode}) {proc.stderr[-2000:]}"
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    _assert_same_run(whole, workdir)
    assert json.loads((whole / "eval" / "metrics.json").read_text()) == json.loads(
        (workdir / "eval" / "metrics.json").read_text()
    )
    assert not list(workdir.rglob(".*.tmp"))  # half-written files of the killed processes were cleared


def test_a_run_killed_from_outside_after_a_checkpoint_resumes_as_the_uninterrupted_one(whole, tmp_path):
    """A SIGKILL from another process (as an out-of-memory kill or a lost job would end it), at whatever moment
    after the checkpoint of step 16 is on disk: the next run resumes from a checkpoint and ends as ``whole``."""
    workdir = tmp_path / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    killed = subprocess.Popen(
        _command(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker, deadline = workdir / "checkpoints" / "16", time.monotonic() + 300
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (workdir / "final.ply").exists(), "the run finished before it could be killed"
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr
    assert "resuming at step" in proc.stdout
    _assert_same_run(whole, workdir)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [16, 24, 32]  # max_to_keep 3


# orbax leaves the failed reads to the garbage collector (launch.py sends those reports to run.log)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capfd):
    cfg = _config()
    cfg.train.steps, cfg.refine.steps, cfg.refine.images = 24, 4, 16
    pipeline.fit(cfg, tmp_path)
    # as a full disk would leave it: the newest checkpoint's largest file cut short
    files = [p for p in (tmp_path / "checkpoints" / "24").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    capfd.readouterr()
    saved = pipeline.fit(cfg, tmp_path)
    out, err = capfd.readouterr()
    folder = tmp_path.resolve()
    warning = [line for line in err.splitlines() if "does not restore" in line]
    assert len(warning) == 1 and warning[0].startswith(f"warning: checkpoint {folder / 'checkpoints' / '24'} does not ")
    assert warning[0].endswith(f"; moved to {folder / 'damaged' / '24'}")
    assert "resuming at step 16" in out and "the refinement will be redone" in out
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [8, 16, 24]  # 24 saved anew
    assert int(saved.state.step) == 24 and int(saved.refined.step) == 4


# orbax leaves the failed reads to the garbage collector (launch.py sends those reports to run.log)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_when_no_checkpoint_restores_the_error_names_the_folder(tmp_path):
    cfg = _config()
    cfg.train.steps = 8
    pipeline.fit(cfg, tmp_path)
    for f in (tmp_path / "checkpoints" / "8").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    setup = create_setup(cfg)
    with pytest.raises(InputError) as info:
        train.restore_or_init(setup, checkpoints.manager(tmp_path, cfg), tmp_path)
    assert "checkpoints: no checkpoint restores (tried 8 (" in str(info.value) and "\n" not in str(info.value)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = _config()
    cfg.train.steps, cfg.refine.steps = 24, 0
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 16:
            (Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1").mkdir()  # a partial write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(InputError) as info:
        pipeline.fit(cfg, tmp_path)
    message = str(info.value)
    assert "cannot save checkpoint 16 (OSError: [Errno 28] No space left on device)" in message
    assert "the checkpoint of step 8 is kept" in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["8"]
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    state = pipeline.fit(cfg, tmp_path).state  # room again: the run resumes from 8 and finishes
    assert int(state.step) == 24


def test_a_second_run_on_a_held_workdir_refuses_and_a_stale_lock_does_not_stop_one(tmp_path):
    with workdirs.locked(tmp_path):
        proc = _launch(tmp_path)
        assert proc.returncode == 1
        assert (
            proc.stderr == f"error: {tmp_path}: another run (process {os.getpid()}) is using this workdir; "
            "wait for it or use another --workdir\n"
        )
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())  # left behind, as a killed run leaves it
    with workdirs.locked(tmp_path):  # nobody holds it: taken
        pass


def test_resuming_with_a_config_that_changes_the_run_lists_the_fields(tmp_path):
    quiet = ["--config.train.report=False", "--config.refine.steps=0"]
    assert _launch(tmp_path, "--config.train.steps=8", *quiet).returncode == 0
    proc = _launch(tmp_path, "--config.train.steps=8", "--config.points.num=80", "--config.data.image_height=48")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "data.image_height: 32 -> 48; points.num: 60 -> 80)" in proc.stderr
    # more steps and other intervals are safe: it resumes
    proc = _launch(tmp_path, "--config.train.steps=16", "--config.train.log_every=4", *quiet)
    assert proc.returncode == 0 and "resuming at step 8" in proc.stdout, proc.stderr
    proc = _launch(tmp_path, "--config.train.steps=8", *quiet)  # fewer steps than the run has taken
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "holds a run at step 16, beyond the 8 steps asked for" in proc.stderr


def test_an_unexpected_exception_is_one_line_and_its_traceback_goes_to_run_log(tmp_path):
    proc = _launch(tmp_path, "--config.refine.steps=0", env={"HOLLY_RAISE_AT": "pictures:1"})
    assert proc.returncode == 1
    assert proc.stderr.endswith(
        f"error: unexpected RuntimeError: fault injected at pictures (the traceback is in {tmp_path / 'run.log'})\n"
    )
    assert "Traceback" not in proc.stdout + proc.stderr.splitlines()[-1]
    log = (tmp_path / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "in save_pictures" in log
    assert "training images, batch 8" in log  # the run's printed lines are kept too


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("x")
    proc = _launch(tmp_path / "taken")
    assert proc.returncode == 1
    assert proc.stderr == f"error: {tmp_path / 'taken'}: exists and is not a folder: --workdir must name a folder\n"


def test_an_object_with_too_few_vertices_is_refused(tmp_path):
    (tmp_path / "one.obj").write_text("v 0 0 0\n")
    proc = _launch(tmp_path / "run", f"--config.data.object={tmp_path / 'one.obj'}")
    assert proc.returncode == 1
    assert "one.obj: has 1 vertex(es); a shape to learn needs at least 3" in proc.stderr
