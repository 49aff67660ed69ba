"""The program of the figures' helper process (:mod:`mnist_bench.figure_worker` starts it):
for each line of JSON on standard input, draw the learning curves and the confusion matrix into
the folder the request names and answer ``drawn`` on standard output; one line on standard error
and status 1 if that fails. It ends at the end of its input, or when its answer finds no reader.

It imports only matplotlib, numpy and :mod:`mnist_bench.plots`, at a lower priority than its
job: the less it takes from the job, the better.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

CURVES, CONFUSION_MATRIX = FIGURES = ("curves.png", "confusion_matrix.png")
DRAWN = b"drawn\n"  # the answer to a request that was drawn


def draw_figures(request: Mapping) -> None:
    from mnist_bench import plots

    title, folder = request["title"], Path(request["folder"])
    history, confusion = request["history"], np.array(request["confusion"])
    plots.save(plots.plot_curves({title: [history]}, title=title), folder / CURVES)
    plots.save(plots.plot_confusion_matrix(confusion, f"{title}: test set"),
               folder / CONFUSION_MATRIX)


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(os, "nice"):  # a core both want goes to the job
        os.nice(10)
    from mnist_bench import plots  # noqa: F401  (matplotlib: imported while the job trains)

    answers = os.dup(1)  # the answers alone: anything else written to stdout goes to stderr
    os.dup2(2, 1)
    try:
        for request in sys.stdin:  # one per job, until the jobs' process ends
            try:
                draw_figures(json.loads(request))
            except Exception as err:  # one line for the job's log, not a traceback
                sys.exit(" ".join(f"{type(err).__name__}: {err}".split())[:300])
            os.write(answers, DRAWN)
    except BrokenPipeError:  # the jobs' process ended while this drew
        pass
