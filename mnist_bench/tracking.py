"""MLflow bookkeeping: where runs go, what they record, and how they end.

Every Hydra job is one MLflow run. :func:`mlflow_run` guarantees the run never stays RUNNING:
an exception ends it FAILED (with ``diverged=true`` for a NaN/inf loss) and an interruption
(Ctrl-C or SIGTERM) ends it KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
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
from mnist_bench.tracking_store import error_sentences
from mnist_bench.train import DivergedError, PrunedError

log = logging.getLogger(__name__)
NOT_PARAMS = ("resume",)
# how an attempt ended
END_TAGS = {"interrupted", "error", "diverged", "diverged_epoch", "pruned", "pruned_at_epoch"}
# Keys that may differ when a run is resumed: where things are, not what is trained.
RESUMABLE_CHANGES = ("data.root", "data.num_workers", "device.", "tracking.uri",
                     "tracking.run_name", "tracking.sweep_id", "tracking.log_model",
                     "trainer.log_every_n_steps")


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
                        f"{error_sentences(err)}") from None
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
