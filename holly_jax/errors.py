"""The one exception for bad user input: a single line naming the file and the problem."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input file or value; `str(err)` is one line, e.g. "teapot.obj: no vertices"."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fsdecode(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the caller passed
        message = self.problem if self.path is None else f"{self.path}: {self.problem}"
        super().__init__(message)

    def __reduce__(self):
        # Exception pickles as cls(*args); rebuild from the two fields instead.
        return (type(self), (self.path, self.problem))
