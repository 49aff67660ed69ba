"""The best model of a sweep into the MLflow Model Registry (``python -m mnist_bench.register``
parses its command line in :mod:`mnist_bench.register`, then runs :func:`register_selection`).

Per network of the sweep, runs that differ only in their seed form one cell; the cell with the
best mean final validation accuracy wins (test accuracy is never looked at), and its run with
the best validation accuracy is registered as ``mnist-<model>``, with an alias (``champion``)
pointing at it. A later sweep moves the alias only if its cell is better on validation than the
one the alias points at; a run registered once is never registered again.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_bench.report_tables import ReportError, select_runs

# Overrides that do not change what is trained: runs that differ only in these share a cell.
NOT_THE_CELL = re.compile(r"(^| )(trainer\.seed|device[.=]\S*|tracking\.\S+|search\.\S+|data\.root|"
                          r"data\.num_workers)=?\S*")


@dataclass
class Candidate:
    """The best run of a network's best cell."""

    model: str
    run_id: str
    model_uri: str   # runs:/<run id>/<logged model name>
    cell: str        # the overrides that define the cell (without the seed)
    val_acc: float   # mean final validation accuracy of the cell
    n_runs: int


def cell_of(overrides: str) -> str:
    return " ".join(NOT_THE_CELL.sub(" ", overrides).split()) or "(defaults)"


def has_logged_model(model_uri: object) -> bool:
    if not isinstance(model_uri, str):  # a run without the model_uri tag
        return False
    try:
        mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError):
        return False
    return True


def best_candidates(runs: pd.DataFrame) -> tuple[list[Candidate], list[str]]:
    """Per network, the candidate to register; and one line per network that has none."""
    finished = runs[(runs["outcome"] == "ok") & runs["val_acc"].notna()]
    finished = finished.assign(cell=finished["tags.hydra_overrides"].fillna("").map(cell_of))
    found, missing = [], []
    for model in runs["base_model"].unique():  # epoch variants compete within their network
        rows = finished[finished["base_model"] == model]
        cells = rows.groupby("cell")["val_acc"].agg(["mean", "size"]).sort_values(
            "mean", ascending=False)
        for cell, stats in cells.iterrows():
            members = rows[rows["cell"] == cell].sort_values("val_acc", ascending=False)
            uris = members.get("tags.model_uri", pd.Series([None] * len(members)))
            with_model = [(run_id, uri) for run_id, uri in zip(members["run_id"], uris,
                                                              strict=True) if has_logged_model(uri)]
            if with_model:
                found.append(Candidate(model, *with_model[0], cell, float(stats["mean"]),
                                       int(stats["size"])))
                break
        else:
            missing.append(f"{model}: no finished run with a logged model "
                           "(runs with tracking.log_model=false cannot be registered)")
    return found, missing


def champion_val_acc(client: MlflowClient, name: str, alias: str) -> tuple[str, float] | None:
    """(version, validation accuracy) that ``name@alias`` points at, if any."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return version.version, float(version.tags.get("val_acc", "nan"))


def register(client: MlflowClient, best: Candidate, alias: str, sweep: str) -> str:
    """Register ``best`` and move the alias to it if it beats the current one; says what it did."""
    name = f"mnist-{best.model}"
    uri = f"models:/{name}@{alias}"
    cell = (f"{best.cell}: val_acc {100 * best.val_acc:.2f} % (mean of {best.n_runs} run"
            f"{'s' if best.n_runs > 1 else ''})")
    current = champion_val_acc(client, name, alias)
    if current and not best.val_acc > current[1]:
        return (f"{name}: @{alias} stays version {current[0]} (val_acc "
                f"{100 * current[1]:.2f} %); this selection's best, {cell}, is not better")
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{best.run_id}'")
    # register_model resolves runs:/ to the run's logged model (MLflow 3 keeps it outside the
    # run's artifacts, where a model version made from the runs:/ URI alone would find nothing)
    version = versions[0] if versions else mlflow.register_model(
        best.model_uri, name,
        tags={"val_acc": str(best.val_acc), "n_runs": str(best.n_runs), "cell": best.cell,
              "selection": sweep})
    client.set_registered_model_alias(name, alias, version.version)
    before = f" (was version {current[0]}, val_acc {100 * current[1]:.2f} %)" if current else ""
    return f"{name}: version {version.version} from run {best.run_id}, {cell}, is @{alias}" \
           f"{before} -> {uri}"


def register_selection(args: argparse.Namespace) -> int:
    """Register the best model of each network of the runs ``args`` select; the exit status."""
    try:
        chosen = select_runs(args)
        candidates, missing = best_candidates(chosen.runs)
    except ReportError as err:
        print(f"mnist_bench.register: {err}", file=sys.stderr)
        return 2
    client = MlflowClient()
    for best in candidates:
        print(register(client, best, args.alias, chosen.description), flush=True)
    for line in missing:
        print(f"mnist_bench.register: {line}", file=sys.stderr)
    return 0 if candidates else 2
