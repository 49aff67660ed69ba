"""Shared helpers: the real MNIST copy, and the real CLI run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_bench.data import DataError, ensure_mnist

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    """$MNIST_DATA_ROOT, else the team's offline copy beside the repo, else ``<repo>/data``."""
    if os.environ.get("MNIST_DATA_ROOT"):
        return Path(os.environ["MNIST_DATA_ROOT"]).resolve()
    shared = REPO.parent / "shared" / "data"
    return shared.resolve() if shared.is_dir() else REPO / "data"


DATA_ROOT = _data_root()


def run_cli(args: list[str], cwd: Path, module: str = "mnist_bench",
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` with the data root set; never raises on failure."""
    env = {**os.environ, "MNIST_DATA_ROOT": str(DATA_ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST copy, downloaded into ``<repo>/data`` if needed and possible."""
    try:
        ensure_mnist(DATA_ROOT)
    except DataError as err:
        pytest.fail(f"{err}\nSet MNIST_DATA_ROOT to a folder holding MNIST/raw/.")
    return DATA_ROOT


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


SMALL_SWEEP = ["trainer.epochs=1", "data.max_train_samples=2000", "data.val_size=1000",
               "tracking.log_model=false"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, data_root):
    """A real 4-job multirun (model=mlp,lenet x lr=0.01,0.001) and the report built from it.

    Returns the launch folder, an MlflowClient on its store and the report's process.
    """
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli(["--multirun", "model=mlp,lenet", "optimizer.lr=0.01,0.001",
                    f"tracking.uri={sqlite_uri(cwd)}", *SMALL_SWEEP], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    report = run_cli(["--tracking-uri", sqlite_uri(cwd), "--out", str(cwd / "report")],
                     cwd=cwd, module="mnist_bench.report")
    assert report.returncode == 0, report.stderr
    return cwd, MlflowClient(tracking_uri=sqlite_uri(cwd)), report
