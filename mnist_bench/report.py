"""``python -m mnist_bench.report``: rebuild the report's Tables 1-4 and figures from MLflow runs.

Runs are selected by sweep id, by experiment, or by default the latest sweep. The tables go out
as Markdown and CSV beside the report's published numbers, with the figures and an ``index.md``,
and the folder is logged as an MLflow run tagged ``run_type=report``
(:mod:`mnist_bench.report_tables`, imported once the command line is read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_bench.selection_args import add_selection_args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.report",
        description="Rebuild the report's Tables 1-4 and figures from tracked MLflow runs, "
                    "beside the published numbers. Default selection: the latest sweep.")
    add_selection_args(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: reports/<sweep id or experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mnist_bench import report_tables  # MLflow, pandas, matplotlib

    return report_tables.make_report(args)


if __name__ == "__main__":
    sys.exit(main())
