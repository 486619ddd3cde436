"""The Recorder's writer thread: a save interval's pictures drawn off the stepping thread, in order, their
errors raised in the caller with the job's traceback."""

import threading
import time
import traceback

import pytest

from holly_jax import outputs


def test_jobs_run_one_at_a_time_in_order_off_the_calling_thread(tmp_path):
    rec = outputs.Recorder(tmp_path)
    ran, gate = [], threading.Event()

    def job(i):
        if i == 0:  # held until the caller is back: it returns before the job ends (or the wait times out)
            assert gate.wait(10)
        time.sleep(0.02 * (3 - i))  # earlier jobs take longer
        ran.append((i, threading.current_thread().name))

    rec.later(lambda: job(0))
    gate.set()
    for i in (1, 2):
        rec.later(lambda i=i: job(i))
    rec.close()  # waits for the last
    assert [i for i, _ in ran] == [0, 1, 2]
    assert all(name.startswith("holly-writer") for _, name in ran)


def test_a_failing_job_raises_in_the_caller_with_its_traceback(tmp_path):
    rec = outputs.Recorder(tmp_path)

    def write_pictures():
        raise OSError(28, "No space left on device")

    rec.later(write_pictures)
    with pytest.raises(OSError) as info:
        rec.later(lambda: None)  # the next save learns of it
    assert "write_pictures" in "".join(traceback.format_tb(info.value.__traceback__))
    rec.later(write_pictures)
    with pytest.raises(OSError):
        rec.close()  # the run's end does too
