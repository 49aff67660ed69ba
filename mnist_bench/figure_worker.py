"""A run's figures (learning curves, confusion matrix), drawn by a helper process.

Importing matplotlib and drawing the two figures take about 0.7 s of a one-epoch run, all of it
Python that holds the GIL, so no thread can overlap it with the job's own work. A job therefore
starts a helper process (its program: :mod:`mnist_bench.figure_helper`) when it starts: the
helper imports matplotlib on the other core while the job trains, draws once the job hands it
the results of its test pass, and writes the figures as PNG files, which the job logs once it
has logged the model. The helper only writes files: the job's process is the only one that
writes its MLflow run.

The helper gets JSON on its standard input and reads nothing else. It ignores Ctrl-C and SIGTERM
and runs in its own session: the job stops it (at its end, or when it fails or is interrupted).
A helper whose job died without a word reads the end of its input, removes its folder and exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from mnist_bench.cli import ReportedError
from mnist_bench.figure_helper import FIGURES

log = logging.getLogger("mnist_bench")
ERRORS = "helper.err"  # the helper's standard error, in its folder
DRAWING_TIMEOUT_S = 120.0  # it draws in about half a second; longer means it is stuck
# The helper runs this copy of the package, wherever the job found it: first on its path, before
# the folder it starts in (``python -m`` would put that first).
HELPER = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
          "from mnist_bench.figure_helper import main; main()")


class FiguresFailed(ReportedError):
    """The helper could not draw the figures; logged, in one line, when raised."""


class FigureWorker:
    """The job's side of one helper process, drawing into ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with open(folder / ERRORS, "wb") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-c", HELPER, str(folder)], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)

    def draw(self, history: Sequence[Mapping[str, float]], confusion: np.ndarray,
             title: str) -> None:
        """Hand the helper what to draw; it draws while the job goes on."""
        request = {"history": list(map(dict, history)), "confusion": confusion.tolist(),
                   "title": title}
        with contextlib.suppress(BrokenPipeError):  # a helper that died: finished() says why
            self.process.stdin.write(json.dumps(request).encode())
            self.process.stdin.close()

    def finished(self) -> list[Path]:
        """Wait for the helper; the figures it drew, or :class:`FiguresFailed`."""
        try:
            status = self.process.wait(timeout=DRAWING_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._fail(f"the helper did not finish within {DRAWING_TIMEOUT_S:g} s")
        if status != 0:
            said = (self.folder / ERRORS).read_text(errors="replace").strip().splitlines()
            self._fail(said[-1] if said else f"the helper ended with status {status}")
        return [self.folder / name for name in FIGURES]

    def _fail(self, reason: str) -> NoReturn:
        message = f"the figures could not be drawn: {reason}"
        log.error("%s", message)
        raise FiguresFailed(message)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):  # what a dead helper never read cannot be flushed
            self.process.stdin.close()


@contextlib.contextmanager
def started() -> Iterator[FigureWorker]:
    """A helper for the length of the block, stopped and its folder removed on leaving."""
    with tempfile.TemporaryDirectory(prefix="mnist_bench_figures_") as folder:
        worker = FigureWorker(Path(folder))
        try:
            yield worker
        finally:
            worker.stop()
