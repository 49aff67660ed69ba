"""``python -m mnist_bench.runs``: runs left RUNNING by a process that is gone, and ending them.

A run stays RUNNING only when its process died without a chance to end it: SIGKILL, an
out-of-memory kill, a power cut. Every training run records the process that writes it (tags
``host``, ``pid`` and ``pid_start``, the process's start time on Linux, so that a recycled PID
is not mistaken for it). This command lists the RUNNING runs of an experiment with their writer's
state, and with ``--close`` ends those whose writer is gone as KILLED; a training run can then be
continued with ``python -m mnist_bench resume=<run id>``. Runs written from another host are
listed, never touched.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_bench.cli import UserError
from mnist_bench.selection_args import add_store_args

if TYPE_CHECKING:  # MLflow is imported once the command line is read
    from mlflow import MlflowClient
    from mlflow.entities import Run

ALIVE, GONE, ELSEWHERE = "alive", "gone", "other host"


def process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else ``""``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def writer_tags() -> dict[str, str]:
    """The tags that name this process as a run's writer."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_start": process_start(pid)}


def writer_state(run: Run) -> str:
    """Whether the process that writes ``run`` is alive, gone, or on another host."""
    tags = run.data.tags
    if tags.get("host") != socket.gethostname():
        return ELSEWHERE
    try:
        pid = int(tags.get("pid", ""))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return GONE
    except PermissionError:  # another user's process
        pass
    recorded = tags.get("pid_start", "")
    return ALIVE if not recorded or recorded == process_start(pid) else GONE


def running_runs(client: MlflowClient, experiment: str) -> list[Run]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")


def close(run: Run, client: MlflowClient) -> None:
    """End a run whose writer is gone as KILLED, as an interrupted run would have ended."""
    client.set_tag(run.info.run_id, "interrupted", "true")
    client.set_tag(run.info.run_id, "closed_after_writer_gone", "true")
    client.set_terminated(run.info.run_id, "KILLED")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.runs",
        description="List the RUNNING runs of an experiment with the state of the process that "
                    "writes each; --close ends those whose process is gone as KILLED.")
    parser.add_argument("--close", action="store_true",
                        help="end the runs whose process is gone (this host only) as KILLED")
    add_store_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mlflow import MlflowClient

    from mnist_bench.tracking_store import read_store

    try:
        uri = read_store(args)
    except UserError as err:
        print(f"mnist_bench.runs: {err}", file=sys.stderr)
        return 2
    client = MlflowClient(uri)
    runs = [(run, writer_state(run)) for run in running_runs(client, args.experiment)]
    for run, state in runs:
        tags = run.data.tags
        ending = ""
        if state == GONE and args.close:
            close(run, client)
            ending = " -> ended KILLED"
            if "checkpoint" in tags:  # a training run; a sweep's or a study's run has none
                ending += f"; continue with resume={run.info.run_id}"
        print(f"{run.info.run_id}  {run.info.run_name}  {tags.get('host', '?')}:"
              f"{tags.get('pid', '?')}  {state}{ending}")
    gone = sum(state == GONE for _, state in runs)
    what = "ended KILLED" if args.close else "whose process is gone (end them with --close)"
    print(f"{len(runs)} RUNNING run(s) in experiment {args.experiment!r} at "
          f"{uri}; {gone} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
