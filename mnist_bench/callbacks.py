"""Hydra callbacks of the project's commands (listed under ``hydra.callbacks`` in ``conf/``)."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_bench.cli import (
    UserError,
    print_error,
    raise_if_interrupted,
    set_between_jobs,
    signals_held,
)

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def create_output_folder(folder: str) -> None:
    """Create the run's or sweep's folder, or exit 1 with one line saying why it cannot be.

    Hydra would create it a moment later, but a failure there prints chained tracebacks.
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print_error(f"cannot create the output folder {folder} ({err}); launch from a folder "
                    "you can write to, or set hydra.run.dir / hydra.sweep.dir")
        sys.exit(1)


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        create_output_folder(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        create_output_folder(config.hydra.sweep.dir)


class SweepParentRun(Callback):
    """One parent MLflow run per sweep (``sweep_runs.py``). Hydra skips ``on_multirun_end`` when
    a job fails, and an interrupt skips it too: an exit handler ends the parent then."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_bench import sweep_runs  # MLflow: imported for sweeps only

        self.parent = None
        if config.hydra.sweeper.get("_target_") == sweep_runs.OPTUNA_SWEEPER:
            return
        try:
            with signals_held():  # the parent run is not created without its exit handler
                self.parent = sweep_runs.start_parent(config)
                atexit.register(sweep_runs.end_parent, self.parent)
        except UserError as err:  # e.g. a tracking store that cannot be used: no job could run
            print_error(str(err))
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_bench import sweep_runs

        if self.parent is not None:
            sweep_runs.end_parent(self.parent)


class SignalsBetweenJobs(Callback):
    """In a sweep whose jobs run in this process, a first Ctrl-C or SIGTERM between two jobs
    stops the sweep as the next job starts (after the last job: as the command ends). Raised at
    once, while Hydra composes the next job's config, its KeyboardInterrupt can surface as an
    unrelated config error. Other launchers' jobs run elsewhere, and this process only waits."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.launching_pid = os.getpid()
        set_between_jobs(config.hydra.launcher.get("_target_") == BASIC_LAUNCHER)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        set_between_jobs(False)
        raise_if_interrupted()

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        # joblib runs its jobs here too when it has one worker
        set_between_jobs(os.getpid() == getattr(self, "launching_pid", None))
