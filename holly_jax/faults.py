"""Named points in a run's life where a fault-injection test may kill the process or raise (tests/test_faults.py).

``point(name)`` does nothing unless the environment variable ``HOLLY_KILL_AT``
is ``NAME:N``: then the N-th time the process passes the point NAME it sends
itself SIGKILL, as a pre-empted or crashed run would end. With ``NAME:N:MS``
the kill comes MS milliseconds after the point from another thread, in the
middle of whatever follows it (a checkpoint being written, a file being
replaced). ``HOLLY_RAISE_AT=NAME:N`` raises an unexpected RuntimeError there
instead. Production runs set neither variable.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_passed: dict[str, int] = {}
_lock = threading.Lock()  # a save's pictures are drawn on the Recorder's thread: both threads pass points


def point(name: str) -> None:
    kill, fail = os.environ.get("HOLLY_KILL_AT"), os.environ.get("HOLLY_RAISE_AT")
    if not (kill or fail):
        return
    wanted, count, *delay = (kill or fail).split(":")
    if wanted != name:
        return
    with _lock:
        _passed[name] = passes = _passed.get(name, 0) + 1
    if passes != int(count):
        return
    if fail:
        raise RuntimeError(f"fault injected at {name}")
    if not delay:
        os.kill(os.getpid(), signal.SIGKILL)

    def later():
        time.sleep(float(delay[0]) / 1000.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=later, daemon=True).start()
