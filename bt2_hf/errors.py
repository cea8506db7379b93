"""The one error class for bad input files: every reader turns a malformed file into it, naming the file."""

from __future__ import annotations

import os


class BT2InputError(ValueError):
    """An input file (IDX, npy/npz, manifest, config, weights) is missing, malformed or inconsistent.

    The message names the file and the problem, and says what to do. It is a `ValueError`, so code that already
    catches `ValueError` for bad input keeps working.

    Args:
        path (`str` or `os.PathLike`, *optional*): the file at fault (kept as ``error.path``).
        problem (`str`): what is wrong with it, and the fix.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None or str(path) in problem else f"{path}: {problem}")
