"""One parent MLflow run per sweep, so that the MLflow UI shows a sweep as one expandable row.

The process that launches a multirun creates the parent (tag ``run_type=sweep``) before any job
starts; each job, in whatever process or machine, finds it by its ``sweep_id`` and becomes its
child (tag ``mlflow.parentRunId``). When the sweep ends, however it ends, the parent records how
many jobs finished, failed, diverged or were killed, holds the sweep's report as artifacts, and
ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from hydra_plugins.mnist_bench_optuna.optuna_sweeper import OptunaSweeperConf
from mnist_bench import runs, tracking_store
from mnist_bench.cli import interrupted

log = logging.getLogger(__name__)
SWEEP = "sweep"
# A search's study is the parent run of its trials (search.py) instead of a sweep's parent.
OPTUNA_SWEEPER = OptunaSweeperConf._target_
WRITERS_GRACE_S = 10.0


@dataclass(frozen=True)
class ParentRun:
    uri: str
    experiment_id: str
    run_id: str
    sweep_id: str


def sweep_id_of(sweep_dir: str | Path) -> str:
    """``<date>/<time>-<id>``: the last two parts of the sweep folder."""
    folder = Path(sweep_dir).resolve()
    return f"{folder.parent.name}/{folder.name}"


def start_parent(config: DictConfig) -> ParentRun:
    """Create the sweep's parent run from the multirun's config (with its ``hydra`` node)."""
    uri = tracking_store.open_configured_store(config.tracking, os.getcwd())
    sweep_id = config.tracking.sweep_id or sweep_id_of(config.hydra.sweep.dir)
    experiment_id = mlflow.get_experiment_by_name(config.tracking.experiment).experiment_id
    overrides = " ".join(config.hydra.overrides.task) or "(defaults)"
    run = MlflowClient(uri).create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={
        "run_type": SWEEP, "sweep_id": sweep_id, "hydra_overrides": overrides,
        "sweep_dir": str(Path(config.hydra.sweep.dir).resolve()),
        "launcher": str(config.hydra.launcher.get("_target_", "")), **runs.writer_tags()})
    return ParentRun(uri, experiment_id, run.info.run_id, sweep_id)


def parent_of(sweep_id: str) -> str | None:
    """The id of the parent run of ``sweep_id`` in the current store, if one was created."""
    found = mlflow.search_runs(search_all_experiments=True, max_results=1, filter_string=(
        f"tags.run_type = '{SWEEP}' and tags.sweep_id = '{sweep_id}'"))
    return None if found.empty else found.iloc[0]["run_id"]


def outcome_counts(children: list[Run]) -> dict[str, int]:
    status = [child.info.status for child in children]
    return {"jobs": len(children), "finished": status.count("FINISHED"),
            "failed": status.count("FAILED"), "killed": status.count("KILLED"),
            "running": status.count("RUNNING"),
            "diverged": sum(c.data.tags.get("diverged") == "true" for c in children)}


def end_parent(parent: ParentRun) -> None:
    """Record the jobs' outcomes and the sweep's report, and end the parent; does nothing if it
    has ended already (both Hydra's end-of-sweep callback and the exit handler call this).
    A store that fails now is one logged line: the jobs' own runs have ended already."""
    try:
        _end_parent(parent)
    except Exception as err:
        log.error("sweep %s: its parent run %s could not be ended (%s); `python -m "
                  "mnist_bench.runs --close` ends it", parent.sweep_id, parent.run_id,
                  " ".join(str(err).split())[:300])


def _end_parent(parent: ParentRun) -> None:
    client = MlflowClient(parent.uri)
    if client.get_run(parent.run_id).info.status != "RUNNING":
        return
    children = close_orphans(client, parent)
    counts = outcome_counts(children)
    for key, value in counts.items():
        client.log_metric(parent.run_id, key, value)
    if counts["finished"]:
        _log_report(client, parent)
    status = ("KILLED" if counts["killed"] or counts["running"] or interrupted() else
              "FAILED" if counts["failed"] or not counts["jobs"] else "FINISHED")
    client.set_terminated(parent.run_id, status)
    if not counts["jobs"] and not interrupted():  # refused before any job ran: nothing to hold
        client.delete_run(parent.run_id)
        return
    log.info("sweep %s: %d jobs, %d finished, %d failed (%d diverged), %d killed; parent run %s "
             "ended %s", parent.sweep_id, counts["jobs"], counts["finished"], counts["failed"],
             counts["diverged"], counts["killed"], parent.run_id, status)


def children_of(client: MlflowClient, parent: ParentRun) -> list[Run]:
    return client.search_runs([parent.experiment_id], max_results=50_000, filter_string=(
        f"tags.mlflow.parentRunId = '{parent.run_id}'"))


def close_orphans(client: MlflowClient, parent: ParentRun) -> list[Run]:
    """The sweep's job runs, after ending KILLED those left RUNNING by a process that is gone:
    interrupted, joblib kills its workers, which then cannot end their runs. Workers still
    alive get ``WRITERS_GRACE_S`` to end their own runs first."""
    deadline = time.monotonic() + WRITERS_GRACE_S
    while True:
        children = children_of(client, parent)
        states = [(c, runs.writer_state(c)) for c in children if c.info.status == "RUNNING"]
        gone = [child for child, state in states if state == runs.GONE]
        ending = [child for child, state in states  # this process cannot end a run meanwhile
                  if state == runs.ALIVE and child.data.tags.get("pid") != str(os.getpid())]
        if not ending or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for child in gone:
        runs.close(child, client)
        log.warning("sweep %s: job run %s was left RUNNING by a process that is gone; ended "
                    "KILLED", parent.sweep_id, child.info.run_id)
    return children_of(client, parent) if gone else children


def _log_report(client: MlflowClient, parent: ParentRun) -> None:
    """The sweep's report (tables and figures) as the parent's ``report/`` artifacts."""
    from mnist_bench import report_tables

    mlflow.set_tracking_uri(parent.uri)
    try:
        experiment = client.get_experiment(parent.experiment_id).name
        with tempfile.TemporaryDirectory() as folder:
            runs_of_sweep = report_tables.load_runs(experiment, parent.sweep_id)
            report_tables.build_report(runs_of_sweep, Path(folder), f"sweep {parent.sweep_id}")
            client.log_artifacts(parent.run_id, folder, "report")
    except Exception as err:  # the report is a bonus; the parent must still end
        log.warning("sweep %s: no report in the parent run (%s)", parent.sweep_id, err)
        client.set_tag(parent.run_id, "report_error", str(err)[:500])
