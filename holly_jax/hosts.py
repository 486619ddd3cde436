"""Several processes, one run: joining JAX's distributed runtime, and ending in one line when a process is lost.

``launch.py --distributed`` runs as a small supervisor around the real
process (``supervise``): JAX's runtime ends a process with a C++ abort (a
multi-line report) when the coordinator (process 0) disappears, and a crash
like that cannot be caught inside the process. The supervised process sends
what the runtime and its collectives print (gloo, coordination-service
errors, abort reports) to a log file of its own, keeps Python's messages on
the terminal, and the supervisor turns a death by a signal into one line that
names that log. ``join`` calls ``jax.distributed.initialize`` with a timeout
for joining and for a silent process; ``lost`` recognises the errors a
collective raises when another process is gone.

Every process computes the same global batch on its own host and puts its
devices' parts of it on them (``setup.place``); each step all-reduces over
all devices, so a run on N processes equals a run on one process with the
same devices. Process 0 alone writes files (outputs, logs, the evaluation);
Orbax coordinates the checkpoints.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import tempfile

import jax

ENV = "HOLLY_JAX_PROCESS_LOG"  # set in the supervised process: where its runtime messages go
JOINED = "holly-jax: joined as "  # the line a supervised process adds to that log once it has joined

# How long the other processes wait at the end for process 0, which evaluates the run alone (JAX's default,
# 5 minutes, would stop them all during a long evaluation); a process that dies is still noticed within
# the heartbeat timeout.
SHUTDOWN_WAIT_S = 7 * 24 * 3600

# What a collective or JAX's coordination service says when another process of the run is gone.
LOST = ("Gloo", "Connection closed by peer", "Connection reset by peer", "heartbeat", "coordination service")

RESUME = "start every process again with the same command to resume from the last checkpoint"


def wanted(argv: list[str]) -> bool:
    """Whether the command line asks for ``--distributed``."""
    on = False
    for arg in argv[1:]:
        if arg in ("--distributed", "--distributed=true", "--distributed=True", "--distributed=1"):
            on = True
        elif arg in ("--nodistributed", "--distributed=false", "--distributed=False", "--distributed=0"):
            on = False
    return on


def supervise(argv: list[str]) -> int:
    """Run ``argv`` again as a child process with ``ENV`` set, pass on SIGINT and SIGTERM (the child has a
    process group of its own, so a signal reaches it once, through here), and return its exit status;
    a child that a signal ended (JAX's runtime aborts it when process 0 is gone) is one line on stderr and
    status 1."""
    fd, log = tempfile.mkstemp(prefix="holly-jax-process-", suffix=".log")
    os.close(fd)
    children: list[subprocess.Popen] = []
    for number in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a scheduler's stop (srun passes both on)
        # set before the child starts, so it does not inherit an ignored SIGINT (a shell's background job)
        signal.signal(number, lambda number, frame: [c.send_signal(number) for c in children])
    child = subprocess.Popen([sys.executable, *argv], env={**os.environ, ENV: log}, process_group=0)
    children.append(child)
    status = child.wait()
    if status >= 0:
        os.unlink(log)
        return status
    with open(log, errors="replace") as f:
        joined = [line.split(JOINED, 1)[1].strip() for line in f if line.startswith(JOINED)]
    if -status != signal.SIGABRT:
        why = f"this process was ended by {signal.Signals(-status).name} (out of memory, or stopped from outside)"
    elif not joined:
        why = "JAX's distributed runtime could not join the other processes (wrong address, or they did not start)"
    else:
        why = f"JAX's distributed runtime stopped {joined[0]}: another process of this run stopped or cannot be reached"
    print(f"error: {why} (the runtime's messages are in {log}); {RESUME}", file=sys.stderr)
    return 1


def quiet_runtime() -> None:
    """In a supervised process: what C and C++ code prints (JAX's runtime, gloo, abort reports) to the file
    ``ENV`` names; what Python prints (progress, records, our errors) still to the terminal."""
    log = os.environ.get(ENV)
    if not log:
        return
    target = os.open(log, os.O_WRONLY | os.O_APPEND)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        getattr(sys, name).flush()
        terminal = os.dup(fd)
        os.dup2(target, fd)
        setattr(sys, name, os.fdopen(terminal, "w", buffering=1))
    os.close(target)
    faulthandler.enable(file=open(log, "a"))  # noqa: SIM115 (held for the life of the process)


def join(coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: int) -> None:
    """``jax.distributed.initialize``: the arguments given, the rest from the cluster (SLURM, Open MPI, or
    ``JAX_COORDINATOR_ADDRESS``); ``timeout_s`` bounds both the wait for every process to join and the
    silence after which a process counts as dead."""
    jax.distributed.initialize(
        coordinator,
        num_processes,
        process_id,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=timeout_s,
        shutdown_timeout_seconds=SHUTDOWN_WAIT_S,
    )
    if os.environ.get(ENV):
        with open(os.environ[ENV], "a") as f:
            f.write(f"{JOINED}process {jax.process_index()} of {jax.process_count()}\n")


def lost(error: BaseException) -> str | None:
    """With several processes: the one-line account of an error that means another process is gone."""
    text = " ".join(str(error).split())
    if not jax.distributed.is_initialized() or not any(s in text for s in LOST):
        return None
    who = f"process {jax.process_index()}"
    return f"{who}: another process of this run stopped or cannot be reached ({text[:160]}); {RESUME}"


def leave(status: int) -> None:
    """End this process now: with several processes, JAX's orderly exit would wait for the others."""
    sys.stdout.flush()
    sys.stderr.flush()
    if jax.distributed.is_initialized():
        os._exit(status)
    sys.exit(status)
