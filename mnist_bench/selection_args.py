"""The options that choose a tracking store and the runs in it, for the commands that read runs
(report, register, runs).

Imports nothing but argparse: those commands parse their command line before they import
MLflow, so that ``--help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import argparse


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """``--experiment`` and ``--tracking-uri``."""
    parser.add_argument("--experiment", default="mnist_bench", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """The store options, and those that select a sweep's runs (report, register)."""
    parser.add_argument("--sweep-id", action="append",
                        help="select the runs tagged with this sweep_id; repeat it to select "
                             "several sweeps together (e.g. the 10-epoch sweep and the 25-epoch "
                             "Table 4 protocol)")
    parser.add_argument("--all-runs", action="store_true",
                        help="select every training run of the experiment instead of one sweep")
    add_store_args(parser)
