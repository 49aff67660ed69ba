"""Which MLflow tracking store a command uses, and opening it with one clear line for each way
it can fail (a server that does not answer, a file that is not an MLflow database, a SQLite
store that does not exist where a command only reads runs).

Kept apart from :mod:`mnist_bench.tracking` (what a training run records), so that the commands
that only read runs (report, register, runs) need neither torch nor the training code.
"""

from __future__ import annotations

import argparse
import os
import socket
import urllib.parse
from pathlib import Path

import mlflow
from omegaconf import DictConfig

from mnist_bench.cli import UserError, signals_held
from mnist_bench.store_lock import sqlite_lock

SERVER_TIMEOUT_S = 10.0


def tracking_uri(configured: str | None, launch_dir: str | Path) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``<launch dir>/mlflow.db`` as an
    absolute SQLite URI (the same store whatever Hydra's output folder)."""
    if configured:
        return configured
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return from_env or f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"


def read_store(args: argparse.Namespace) -> str:
    """The store that :func:`~mnist_bench.selection_args.add_store_args`' options name, made
    current; one line if absent."""
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
            raise UserError(f"tracking store {uri} cannot be used: {error_sentences(err)}\n  Point "
                            "tracking.uri (or $MLFLOW_TRACKING_URI) at an MLflow store: "
                            "sqlite:///<folder>/mlflow.db or http://<host>:<port>") from None


def open_configured_store(tracking: DictConfig, launch_dir: str | Path) -> str:
    """Open the store and experiment that a config's ``tracking`` node names (its ``uri``
    resolved by :func:`tracking_uri`); returns the store's URI."""
    uri = tracking_uri(tracking.uri, launch_dir)
    open_store(uri, tracking.experiment)
    return uri


def error_sentences(err: Exception, limit: int = 300) -> str:
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
