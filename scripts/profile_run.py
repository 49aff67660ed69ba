"""Where the wall time of one ``python -m mnist_bench`` run goes, phase by phase.

Wraps the job's main steps with timers, runs the real CLI in this process with the given
overrides, and prints when each step started and how long it took, then the time at exit:

    MNIST_DATA_ROOT=../shared/data python scripts/profile_run.py model=mlp trainer.epochs=1

Steps that a configuration skips (e.g. ``log_model`` with ``tracking.log_model=false``) are not
listed. Run it twice in the same folder to time a run against an existing store.
"""

from __future__ import annotations

import atexit
import functools
import gc
import sys
import time
from collections.abc import Callable
from types import ModuleType

START = time.perf_counter()
gc.disable()  # as the job does while it imports (mnist_bench/gc_control.py)
from mnist_bench import __main__ as entry  # noqa: E402
from mnist_bench import figure_worker, job, tracking, tracking_store  # noqa: E402  (torch, MLflow)

IMPORTED = time.perf_counter()
STEPS = {tracking_store: ["open_store"],
         tracking: ["log_config", "log_datasets", "log_model", "log_evaluation"],
         job: ["build_splits", "fit", "evaluate"],
         figure_worker.FigureWorker: ["finished"]}  # waiting for the figures' helper
timings: list[tuple[str, float, float]] = [("imports", START, IMPORTED)]


def timed(module: ModuleType | type, name: str) -> None:
    original: Callable = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings.append((name, begin, time.perf_counter()))

    setattr(module, name, wrapper)


def report() -> None:
    for name, begin, end in timings:
        print(f"{name:16s} starts {begin - START:6.2f} s, takes {end - begin:5.2f} s",
              file=sys.stderr)
    print(f"{'exit':16s} at     {time.perf_counter() - START:6.2f} s", file=sys.stderr)


if __name__ == "__main__":
    for module, names in STEPS.items():
        for name in names:
            timed(module, name)
    atexit.register(report)  # runs before mnist_bench.process_end's exit, registered first
    sys.argv = ["mnist_bench", *sys.argv[1:]]
    entry.cli_main()  # as `python -m mnist_bench` does: no interpreter teardown
