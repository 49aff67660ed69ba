"""``python -m mnist_bench.register``: the best model of a sweep into the MLflow Model Registry.

Per network, the cell (runs that differ only in their seed) with the best mean validation
accuracy wins, and its best run is registered as ``mnist-<model>`` with an alias pointing at it,
if it beats the model the alias points at (:mod:`mnist_bench.model_registry`, imported once the
command line is read).
"""

from __future__ import annotations

import argparse
import re
import sys

from mnist_bench.selection_args import add_selection_args

ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.register",
        description="Register each network's best model of a sweep (by mean validation "
                    "accuracy over seeds) as mnist-<model> and point an alias at it, if it "
                    "beats the model the alias points at. Default selection: the latest sweep.")
    add_selection_args(parser)
    parser.add_argument("--alias", default="champion", help="the alias to move (default: "
                                                            "champion)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not ALIAS.fullmatch(args.alias) or re.fullmatch(r"v\d+|latest", args.alias, re.I):
        print(f"mnist_bench.register: --alias {args.alias!r}: letters, digits, _ and -, not "
              "starting with a digit or -, and not 'latest' or v<number> (MLflow reserves them)",
              file=sys.stderr)
        return 2
    from mnist_bench import model_registry  # MLflow, pandas

    return model_registry.register_selection(args)


if __name__ == "__main__":
    sys.exit(main())
