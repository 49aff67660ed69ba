"""A run's figures (learning curves, confusion matrix), drawn by a helper process.

Importing matplotlib and drawing the two figures take about 0.7 s of a one-epoch run, all of it
Python that holds the GIL, so no thread can overlap it with the job's own work. A job therefore
takes a helper process (its program: :mod:`mnist_bench.figure_helper`) when it starts: the
helper imports matplotlib on the other core while the job trains, draws once the job hands it
the results of its test pass, and writes the figures as PNG files into the job's output folder,
which the job logs once it has logged the model. The helper only writes files: the job's process
is the only one that writes its MLflow run.

A helper that drew what its job asked, or was never asked, waits for the next job of the same
process (the jobs of a sweep, of a test session), which then does not wait for matplotlib's
import again. A helper that failed, or whose job ended while it drew, is stopped.

The helper gets one line of JSON per job on its standard input and answers each with one line;
its standard error goes to a file without a name, which no kill can leave behind. It ignores
Ctrl-C and SIGTERM and runs in its own session: a job stops it, or it ends when its input
closes, which it does when the job's process ends, however.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from mnist_bench.cli import ReportedError
from mnist_bench.figure_helper import DRAWN, FIGURES

log = logging.getLogger("mnist_bench")
DRAWING_TIMEOUT_S = 120.0  # it draws in about half a second; longer means it is stuck
# The helper runs this copy of the package, wherever the job found it: first on its path, before
# the folder it starts in (``python -m`` would put that first).
HELPER = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
          "from mnist_bench.figure_helper import main; main()")


class FiguresFailed(ReportedError):
    """The helper could not draw the figures; logged, in one line, when raised."""


class FigureWorker:
    """The job's side of one helper process."""

    def __init__(self) -> None:
        self.busy = False  # asked to draw, or waited for, and its answer not read yet
        self.folder: Path | None = None  # where the current request's figures go
        self.owner = os.getpid()  # a process forked from the owner must leave it alone
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115  (the helper's stderr; stop() closes it)
        self.errors_before = 0  # what it said there before the current request
        self.process = subprocess.Popen(
            [sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.errors, start_new_session=True)

    def draw(self, history: Sequence[Mapping[str, float]], confusion: np.ndarray, title: str,
             folder: Path) -> None:
        """Hand the helper what to draw into ``folder``; it draws while the job goes on."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.send({"history": list(map(dict, history)), "confusion": confusion.tolist(),
                   "title": title, "folder": str(folder)})

    def send(self, request: Mapping) -> None:
        """One request, as one line of JSON."""
        self.busy = True
        self.errors_before = self.errors.seek(0, os.SEEK_END)
        with contextlib.suppress(BrokenPipeError):  # a helper that died: finished() says why
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()

    def finished(self) -> list[Path]:
        """Wait for the helper's answer; the figures it drew, or :class:`FiguresFailed`."""
        self.busy = True
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            answered = selector.select(DRAWING_TIMEOUT_S)
        if not answered:
            self._fail(f"the helper did not finish within {DRAWING_TIMEOUT_S:g} s")
        answer = self.process.stdout.readline()
        if answer != DRAWN:
            self._fail(self._why_not(answer))
        self.busy = False
        return [self.folder / name for name in FIGURES]

    def idle(self) -> bool:
        """Alive and not drawing: ready for the next job."""
        return not self.busy and self.process.poll() is None

    def _why_not(self, answer: bytes) -> str:
        """Why the helper gave ``answer`` instead of ``drawn``: its last words on this request,
        else how it ended (an empty answer: the end of its output), else the answer itself."""
        self.errors.seek(self.errors_before)
        said = self.errors.read().decode(errors="replace").strip().splitlines()
        if said:
            return said[-1]
        if answer:
            return f"the helper answered {answer[:100]!r}"
        return f"the helper ended with status {self.process.wait()}"

    def _fail(self, reason: str) -> NoReturn:
        message = f"the figures could not be drawn: {reason}"
        log.error("%s", message)
        raise FiguresFailed(message)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.errors):
            with contextlib.suppress(OSError):  # what a dead helper never read cannot be flushed
                stream.close()


_idle: FigureWorker | None = None  # the helper the last job of this process left ready


@contextlib.contextmanager
def started() -> Iterator[FigureWorker]:
    """A helper for the length of the block: the one an earlier job left ready, else a new one.
    Left ready for the next job if it is idle at the end of the block, stopped otherwise."""
    global _idle
    worker, _idle = _idle, None
    if worker is not None and worker.owner != os.getpid():
        worker = None  # inherited by a fork: its owner still uses it
    if worker is None or not worker.idle():
        if worker is not None:
            worker.stop()
        worker = FigureWorker()
    try:
        yield worker
    finally:
        if worker.idle():
            _idle = worker
        else:
            worker.stop()
