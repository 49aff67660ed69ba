"""Shared helpers: the real MNIST copy, a training job run in this process through Hydra's
compose API, and the real CLI run in a subprocess (the ``slow`` tier's end-to-end tests)."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# With pytest-xdist (``-n auto``) each worker process gets its share of the cores, before torch is
# imported: with torch's default, every core in every worker, the workers' threads wait for each
# other, and the fast tier took longer (docs/results/command_timings.md).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, (_cores or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from mnist_bench import cli
from mnist_bench.__main__ import run_job
from mnist_bench.cli import CONF_DIR
from mnist_bench.data import DataError, ensure_mnist
from mnist_bench.tsne import run_tsne

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    """$MNIST_DATA_ROOT, else the team's offline copy beside the repo, else ``<repo>/data``."""
    if os.environ.get("MNIST_DATA_ROOT"):
        return Path(os.environ["MNIST_DATA_ROOT"]).resolve()
    shared = REPO.parent / "shared" / "data"
    return shared.resolve() if shared.is_dir() else REPO / "data"


DATA_ROOT = _data_root()


def run_cli(args: list[str], cwd: Path, module: str | None = "mnist_bench",
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` (``python <args>`` without a module) in ``cwd`` with the
    data root set; never raises on failure."""
    env = {**os.environ, "MNIST_DATA_ROOT": str(DATA_ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, *(["-m", module] if module else []), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# The configs of the Hydra commands, and the function each runs once Hydra has composed it.
APPS = {"config": run_job, "tsne": run_tsne}


def compose_job(overrides: list[str], launch_dir: Path, app: str = "config") -> DictConfig:
    """The config ``python -m mnist_bench <overrides>`` (``app="tsne"``: ``mnist_bench.tsne``)
    would run in ``launch_dir`` (on the real MNIST copy unless ``data.root`` is given), with its
    ``hydra`` node; the job's output folder is ``<launch_dir>/outputs/<n>``."""
    if not any(o.startswith("data.root=") for o in overrides):
        overrides = [f"data.root={DATA_ROOT}", *overrides]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(launch_dir)  # Hydra records it as the launch folder
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=app, overrides=overrides, return_hydra_config=True)
    output_dir = launch_dir / "outputs" / str(len(list(launch_dir.glob("outputs/*"))))
    output_dir.mkdir(parents=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    return cfg


@dataclass
class Job:
    """A job run in this process: its printed summary, its MLflow run id and output folder."""

    stdout: str
    run_id: str
    output_dir: Path


def run_in_process(overrides: list[str], launch_dir: Path, app: str = "config") -> Job:
    """Run one job as the command does after Hydra composed its config (value checks, training
    or t-SNE, tracking), in this process: no interpreter start, no imports to repeat. Errors
    propagate as exceptions (``UserError`` for what the command prints as one message)."""
    cfg = compose_job(overrides, launch_dir, app)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to the task function
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(launch_dir)  # a new experiment's artifacts go to ./mlruns, as from the CLI
        APPS[app](cfg)
    match = re.search(r"run_id=(\w+)", out.getvalue())
    assert match, f"no summary line in output:\n{out.getvalue()}"
    return Job(out.getvalue(), match.group(1), Path(HydraConfig.get().runtime.output_dir))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST copy, downloaded into ``<repo>/data`` if needed and possible (by one
    pytest-xdist worker while the others wait, not by all at once into one folder)."""
    try:
        with FileLock(Path(tempfile.gettempdir()) / "mnist_bench_tests_data.lock"):
            ensure_mnist(DATA_ROOT)
    except DataError as err:
        pytest.fail(f"{err}\nSet MNIST_DATA_ROOT to a folder holding MNIST/raw/.")
    return DATA_ROOT


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty SQLite store with MLflow's tables, copied per test to skip its slow migrations."""
    folder = tmp_path_factory.mktemp("store_template")
    MlflowClient(tracking_uri=sqlite_uri(folder)).search_experiments()
    return folder / "mlflow.db"


def copy_store(template: Path, folder: Path) -> str:
    shutil.copy(template, folder / "mlflow.db")
    return sqlite_uri(folder)


@pytest.fixture
def store(tmp_path, store_template) -> str:
    """A fresh store in the test's folder (its launch folder's default ``mlflow.db``)."""
    return copy_store(store_template, tmp_path)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Spare the interpreter's last garbage collection at exit: it would walk every object the
    session made (torch, MLflow, every job's leftovers) and find nothing that needs it; 6 s
    after the fast tier (docs/results/command_timings.md)."""
    gc.freeze()


@pytest.fixture(autouse=True)
def no_signal_received(monkeypatch):
    """A signal sent to pytest's own process by one test must not stop the next test's jobs:
    each command starts as a fresh process with nothing received."""
    monkeypatch.setattr(cli, "_signal_received", None)
    monkeypatch.setattr(cli, "_between_jobs", False)
    monkeypatch.setattr(cli, "_writes_held", 0)
