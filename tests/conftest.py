"""Shared helpers: the real MNIST copy, and the real CLI run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MNIST_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


def run_cli(args: list[str], cwd: Path, module: str = "mnist_bench",
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` with the data root set; never raises on failure."""
    env = {**os.environ, "MNIST_DATA_ROOT": str(DATA_ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST raw files not found under {DATA_ROOT}; set MNIST_DATA_ROOT")
    return DATA_ROOT


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"
