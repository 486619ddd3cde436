"""What a run writes into its workdir, each file written so that a kill never leaves half of it.

Whole files are written to a temporary name and renamed into place; the
metrics log is append-only and, on resume, cut back to the restored step (a
torn last line from a kill is dropped with it). A ``Recorder`` sends each
phase's records to the metrics log, TensorBoard and the console, and draws
the pictures of each save interval on a thread of its own while the steps go
on.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
import sys
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
from tqdm import tqdm

from holly_jax import faults, pointfile
from holly_jax.atomic import write_atomic


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    return str(x)


def _clean(value: Any) -> Any:
    """JSON-safe scalar: numpy/JAX scalars to Python, non-finite floats to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only complete records up to ``step`` (what the restored checkpoint has seen)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if record.get("step", 0) <= step:
                kept.append(line + "\n")
        write_atomic(self.path, "".join(kept).encode())

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()}) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line[: len(line) // 2])  # two writes: a kill between them tears the line, as any kill may
            f.flush()
            faults.point("metrics")
            f.write(line[len(line) // 2 :])
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_shape(workdir: Path, stem: str, points_Nx3: np.ndarray, subfolders: bool = True) -> None:
    """The point cloud as PLY and OBJ: ``plys/<stem>.ply`` and ``objs/<stem>.obj`` (or both in workdir)."""
    ply = workdir / "plys" / f"{stem}.ply" if subfolders else workdir / f"{stem}.ply"
    obj = workdir / "objs" / f"{stem}.obj" if subfolders else workdir / f"{stem}.obj"
    pointfile.write_points(ply, points_Nx3)
    pointfile.write_points(obj, points_Nx3)


class TensorBoard:
    """Scalars of each logged record as TensorBoard events under ``logdir``."""

    def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None):
        from tensorboardX import SummaryWriter  # import here: only runs that log need it

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step or None)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, tag: str, image_HxW: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, np.asarray(image_HxW), step, dataformats="HW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Recorder:
    """Where a run's records go: ``metrics.jsonl``, TensorBoard events under ``tb/``, and console lines.

    Only the primary process (process 0) writes or prints. Opening it cuts the log back to ``resume_step``,
    the step the restored state has seen (training and refinement steps counted together).

    ``later(job)`` runs a job that only writes files (a save interval's pictures, from host copies of what
    they show) on the recorder's writer thread, so that the device goes on stepping meanwhile
    (a save's pictures take about a second of host time: on a GPU, some hundreds of steps at the original's
    batch). One job runs at a time, in order: ``later`` first waits for the one before, and a job's exception
    is raised in the caller there, at ``settle`` or at ``close``, with the job's traceback. Used as a context
    manager it closes on the way out however the block ends, waiting for the job; when the block raises,
    that error is the one that propagates (a stop signal's one line is not replaced by a job's).
    """

    def __init__(self, workdir: Path, primary: bool = True, resume_step: int = 0):
        self.primary = primary
        self.log = MetricsLog(Path(workdir) / "metrics.jsonl")
        self.tb = None
        self._writer: futures.ThreadPoolExecutor | None = None
        self._job: futures.Future | None = None
        if primary:
            self.log.truncate_after(resume_step)
            self.tb = TensorBoard(Path(workdir) / "tb", purge_step=resume_step)

    def say(self, message: str) -> None:
        if self.primary:
            tqdm.write(message)

    def write(self, record: dict[str, Any]) -> None:
        if self.primary:
            self.log.append(record)
            self.tb.write(record)

    def image(self, tag: str, image_HxW: np.ndarray, step: int) -> None:
        if self.primary:
            self.tb.image(tag, image_HxW, step)

    def records(self) -> list[dict[str, Any]]:
        return self.log.read()

    def later(self, job: Callable[[], None]) -> None:
        self.settle()
        if self._writer is None:
            self._writer = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="holly-writer")
        self._job = self._writer.submit(job)

    def settle(self) -> None:
        """Wait for the job ``later`` started, if any; raise its exception."""
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def close(self) -> None:
        try:
            self.settle()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None
            if self.tb is not None:
                self.tb.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            self.close()
        except Exception:
            if kind is None:  # else the block's own error is the one to report
                raise


class _Tee(io.TextIOBase):
    """A console stream that also appends what it prints to a log file (progress-bar redraws excepted)."""

    def __init__(self, stream: TextIO, log: TextIO):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        if self.log is not None and "\r" not in text:
            try:
                self.log.write(text)
                self.log.flush()
            except OSError:  # the log's disk is full or gone: the console goes on alone
                self.log = None
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


@contextlib.contextmanager
def console_log(path: str | os.PathLike) -> Iterator[TextIO]:
    """Append everything printed inside the block to ``path`` (with a header line: time and command); yields
    the open log, where a caller can add a traceback."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(sys.argv)}\n")
        out, err, hook = sys.stdout, sys.stderr, sys.unraisablehook
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        # exceptions Python can only report, not raise (in finalisers, in library threads): to the log alone
        sys.unraisablehook = lambda u: log.write(f"unraisable exception ({u.err_msg or 'ignored'}): {u.exc_value!r}\n")
        try:
            yield log
        finally:
            sys.stdout, sys.stderr, sys.unraisablehook = out, err, hook
