"""MLflow bookkeeping: where runs go, what they record, and how they end.

Every Hydra job is one MLflow run. :func:`mlflow_run` guarantees the run never stays RUNNING:
an exception ends it FAILED (with ``diverged=true`` for a NaN/inf loss) and an interruption
(Ctrl-C or SIGTERM) ends it KILLED.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Run
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from mnist_bench import data, metrics
from mnist_bench.cli import UserError, interrupted, signals_held
from mnist_bench.models.classifier import CONTRACT, DigitClassifier
from mnist_bench.store_lock import sqlite_lock
from mnist_bench.train import DivergedError, PrunedError

log = logging.getLogger(__name__)
NOT_PARAMS = ("resume",)
SERVER_TIMEOUT_S = 10.0
# how an attempt ended
END_TAGS = {"interrupted", "error", "diverged", "diverged_epoch", "pruned", "pruned_at_epoch"}
# Keys that may differ when a run is resumed: where things are, not what is trained.
RESUMABLE_CHANGES = ("data.root", "data.num_workers", "device.", "tracking.uri",
                     "tracking.run_name", "tracking.sweep_id", "tracking.log_model",
                     "trainer.log_every_n_steps")


def tracking_uri(configured: str | None, launch_dir: str | Path) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``<launch dir>/mlflow.db`` as an
    absolute SQLite URI (the same store whatever Hydra's output folder)."""
    if configured:
        return configured
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return from_env or f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """``--experiment`` and ``--tracking-uri``, for the commands that read runs."""
    parser.add_argument("--experiment", default="mnist_bench", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")


def read_store(args: argparse.Namespace) -> str:
    """The store that ``add_store_args``' options name, made current; one line if absent."""
    uri = existing_store(tracking_uri(args.tracking_uri, Path.cwd()))
    mlflow.set_tracking_uri(uri)
    return uri


def existing_store(uri: str) -> str:
    """``uri``, for a command that only reads runs: a SQLite store that does not exist is
    refused in one line (MLflow would create an empty one and then find nothing)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {uri}: run this in the folder you trained in, or "
                        "give the store's URI")
    return uri


def open_store(uri: str, experiment: str) -> None:
    """Use the tracking store at ``uri`` and its ``experiment``, creating either if need be;
    :class:`UserError` in one line if the store cannot be used (a server that does not answer,
    a file that is not an MLflow database, a file-store path that MLflow 3 refuses).

    MLflow creates a new SQLite store's tables, and a new experiment, by check-then-create: when
    two jobs start at once (hydra/launcher=joblib), one of them fails. For a SQLite store a file
    lock serialises this first contact (later writes wait on SQLite's busy timeout, which MLflow
    sets); against a server, the loser of the race finds the experiment on a second look.
    """
    _check_server_answers(uri)
    mlflow.set_tracking_uri(uri)
    # held: an interrupt while MLflow creates a new store's tables leaves them half made
    with sqlite_lock(uri, "tracking store"), signals_held():
        try:
            _set_experiment(experiment)
        except Exception as err:  # MlflowException, SQLAlchemy's errors, OSError ...
            raise UserError(f"tracking store {uri} cannot be used: {_sentences(err)}\n  Point "
                            "tracking.uri (or $MLFLOW_TRACKING_URI) at an MLflow store: "
                            "sqlite:///<folder>/mlflow.db or http://<host>:<port>") from None


def _sentences(err: Exception, limit: int = 300) -> str:
    """The error's message on one line, cut after its last whole sentence within ``limit``."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[:cut.rfind(". ") + 1] or cut


def _set_experiment(experiment: str) -> None:
    try:
        mlflow.set_experiment(experiment)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        mlflow.set_experiment(experiment)  # a server's other client created it meanwhile


def _check_server_answers(uri: str) -> None:
    """A tracking server that cannot be reached is refused at once: MLflow's own client retries
    for about four minutes before it gives up."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=SERVER_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"tracking store {uri} cannot be reached ({err.strerror or err}); start "
                        "the server, or point tracking.uri at one that runs") from None


def git_commit(cwd: str | Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flat_params(cfg: DictConfig) -> dict[str, str]:
    container = OmegaConf.to_container(cfg, resolve=True)
    flat = pd.json_normalize(container, sep=".").iloc[0].to_dict()
    return {k: str(v) for k, v in flat.items() if k not in NOT_PARAMS}


@contextlib.contextmanager
def mlflow_run(run_id: str | None, run_name: str, tags: Mapping[str, str],
               resumable: bool = True) -> Iterator[str]:
    """Start (or, with ``run_id``, reopen) a run and always end it with the right status; an
    interrupted run that is ``resumable`` (it keeps a checkpoint) says how to continue it.

    A reopened run drops the tags of how it ended before (``interrupted``, ``error``, ...): they
    described the attempt that this one continues."""
    try:
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                               tags=dict(tags))
    except mlflow.exceptions.MlflowException as err:  # e.g. a read-only store
        raise UserError(f"tracking store {mlflow.get_tracking_uri()} cannot record a run: "
                        f"{_sentences(err)}") from None
    run_id = run.info.run_id
    for stale in END_TAGS & run.data.tags.keys():
        mlflow.delete_tag(stale)
    try:
        yield run_id
    except DivergedError as err:
        end_run(run_id, "FAILED", {"diverged": "true", "diverged_epoch": str(err.epoch)},
                f"{err}; MLflow run {run_id} ended FAILED with diverged=true")
        raise
    except PrunedError as err:  # a search's pruner stopped the trial: not a failure
        end_run(run_id, "FINISHED", {"pruned": "true", "pruned_at_epoch": str(err.epoch)},
                f"{err}; MLflow run {run_id} ended FINISHED with pruned=true", logging.INFO)
        raise
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt) or interrupted():  # also one turned into an error
            how_to_go_on = (f"; the last complete checkpoint is kept; continue with "
                            f"resume={run_id}" if resumable else "")
            end_run(run_id, "KILLED", {"interrupted": "true"},
                    f"interrupted: MLflow run {run_id} ended KILLED{how_to_go_on}")
        else:
            end_run(run_id, "FAILED", {"error": f"{type(err).__name__}: {err}"[:5000]},
                    f"MLflow run {run_id} ended FAILED ({type(err).__name__})")
        raise
    else:
        end_run(run_id, "FINISHED")


def end_run(run_id: str, status: str, tags: Mapping[str, str] | None = None,
            message: str | None = None, level: int = logging.ERROR) -> None:
    """Tag how the run ended, end it with ``status`` and log ``message``, with signals held.
    The tags are the less important write: when they fail (a full disk, a store error) the run
    still ends."""
    with signals_held():
        try:
            if tags:
                mlflow.set_tags(dict(tags))
        except Exception as err:
            log.error("MLflow run %s: could not record %s (%s)", run_id, ", ".join(tags),
                      " ".join(str(err).split())[:200] or type(err).__name__)
        mlflow.end_run(status)
        if message:
            log.log(level, "%s", message)


def resume_problems(cfg: DictConfig, run: Run) -> list[str]:
    """Why ``run`` cannot be continued with ``cfg``, one line each: it finished already, or
    ``cfg`` differs from its logged params in a key that changes what is trained."""
    if run.info.status == "FINISHED":
        return ["the run is FINISHED already; start a new run instead"]
    logged = run.data.params
    return [f"{key}={value}: the run was started with {logged[key]}; resume with the same value"
            for key, value in flat_params(cfg).items()
            if key in logged and logged[key] != value and not key.startswith(RESUMABLE_CHANGES)]


def log_missing_epochs(run_id: str, history: Sequence[Mapping[str, float]]) -> None:
    """Log the checkpointed epochs that the run lacks (a kill between checkpoint and logging),
    so that a resumed run's metric history has no gaps."""
    client = mlflow.MlflowClient()
    keys = {key for row in history for key in row}
    logged = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys}
    now = int(time.time() * 1000)
    missing = [Metric(key, value, now, epoch) for epoch, row in enumerate(history, start=1)
               for key, value in row.items() if epoch not in logged[key]]
    if missing:
        client.log_batch(run_id, metrics=missing)


def log_config(cfg: DictConfig, hydra_dir: Path | None) -> None:
    mlflow.log_params(flat_params(cfg))
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        mlflow.log_artifacts(str(hydra_dir), "hydra")


def log_datasets(records: Mapping[str, data.SplitRecord], root: str) -> None:
    """The training, validation and test images as MLflow datasets (the runs table's Dataset
    column): each with a digest of its exact images and labels (:class:`data.SplitRecord`), and
    the folder it came from."""
    source = str(data.raw_dir(root))
    datasets = []
    for context, record in records.items():
        with warnings.catch_warnings():  # MLflow 3 registers its local source class twice
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            datasets.append(mlflow.data.from_numpy(
                record.images.numpy(), targets=record.labels.numpy(), source=source,
                name=f"mnist-{context}", digest=record.digest))
    contexts, no_tags = list(records), [None] * len(datasets)
    try:
        mlflow.log_inputs(datasets, contexts, no_tags)
    except mlflow.exceptions.MlflowException:
        # The store looks a dataset up, then inserts it if missing: two jobs that start at once
        # with the same data can both miss it, and the later insert fails. The dataset is there
        # now, so a second try links it (a failure for another reason recurs and is raised).
        mlflow.log_inputs(datasets, contexts, no_tags)


def log_epoch(epoch: int, row: Mapping[str, float]) -> None:
    mlflow.log_metrics(dict(row), step=epoch)


def log_evaluation(targets: np.ndarray, predictions: np.ndarray, figures: Sequence[Path]) -> None:
    """The classification report of a finished run's test pass, and its figures."""
    report = metrics.classification_report(targets, predictions)
    mlflow.log_text(metrics.format_report(report), "classification_report.txt")
    mlflow.log_dict(report, "classification_report.json")
    for path in figures:
        mlflow.log_artifact(str(path), "figures")


def log_model(model: torch.nn.Module, pixels: torch.Tensor, normalize: str, name: str) -> None:
    """The trained model as a :class:`DigitClassifier` (pixels in, probabilities out) with a
    signature and a numpy input example of ``pixels`` (at least 2 images, so that the exported
    batch dimension stays dynamic).

    Explicit ``pip_requirements`` spare MLflow from inferring them, which halves the time. The
    run's tag ``model_uri`` says where the model is: ``runs:/<run id>/<name>``.
    """
    classifier = DigitClassifier(model.cpu(), normalize).eval()
    example = pixels.cpu().numpy()
    with torch.no_grad():
        output = classifier(pixels.cpu()).numpy()
    requirements = [f"{name}=={metadata.version(name).split('+')[0]}"
                    for name in ("torch", "torchvision")]
    info = mlflow.pytorch.log_model(classifier, name=name, input_example=example,
                                    signature=infer_signature(example, output),
                                    pip_requirements=requirements, metadata=CONTRACT)
    mlflow.set_tag("model_uri", f"runs:/{info.run_id}/{name}")
