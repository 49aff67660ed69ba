"""``python -m mnist_bench``: train one model on MNIST and record the run in MLflow.

Hydra composes and type-checks the config; :func:`main` checks its values and only then imports
torch and MLflow (``job.py``), so that ``--help``, ``--cfg job`` and a config mistake answer in
about a second.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from mnist_bench import gc_control
from mnist_bench.cli import (
    CONF_DIR,
    ReportedError,
    UserError,
    exit_interrupted,
    fail_job,
    run_command,
)
from mnist_bench.config import config_problems, register_configs

log = logging.getLogger("mnist_bench")
register_configs()


def run_job(cfg: DictConfig) -> float:
    problems = config_problems(cfg)
    if problems:
        raise UserError("invalid configuration:\n  " + "\n  ".join(problems))
    with gc_control.job_scope():
        from mnist_bench.job import train_and_track  # torch and MLflow: seconds to import

        return train_and_track(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run_job(cfg)
    except UserError as err:
        log.error("%s", err)
        fail_job(err)
    except ReportedError as err:  # e.g. divergence: tracking.mlflow_run has said how it ended
        fail_job(err)
    except KeyboardInterrupt:  # likewise; stops a whole sweep, as Ctrl-C should
        exit_interrupted()


def cli_main() -> None:
    """``python -m mnist_bench`` and the ``mnist-bench`` command."""
    # Run the copy imported as mnist_bench.__main__: a process launcher (hydra/launcher=joblib)
    # pickles the job by reference to that module, and cannot pickle functions of __main__.
    from mnist_bench.__main__ import main as importable_main

    run_command(importable_main, "config")


if __name__ == "__main__":
    cli_main()
