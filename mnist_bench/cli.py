"""What the command-line entry points share: where the configs live and how a job fails."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

# Absolute, so that Hydra finds it whether a module runs as __main__ or is imported by a
# process launcher (hydra/launcher=joblib pickles the task function).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class UserError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


class ReportedError(RuntimeError):
    """A failure that has been logged, with how its MLflow run ended, before it reaches the
    entry point; the entry point only sets the exit status."""


def fail_job(err: Exception) -> NoReturn:
    """Exit 1; in a multirun, raise instead so that the other jobs still run (the sweep still
    exits non-zero at the end)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise err
    sys.exit(1)
