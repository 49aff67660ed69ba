"""Markdown table of runs grouped by ``tracking.label`` (the presets and their ablations) and, for
unlabelled runs, by model and learning rate: seeds, test accuracy mean ± sd and minimum, best
validation accuracy, training time.

    python scripts/presets_summary.py --tracking-uri sqlite:///mlflow.db [--experiment mnist_bench]
"""

from __future__ import annotations

import argparse

import mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="mnist_bench")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[args.experiment],
                              filter_string="attributes.status = 'FINISHED'")
    if "tags.run_type" in runs:  # sweeps' and studies' parent runs
        runs = runs[runs["tags.run_type"].isna()]
    group = (runs["tags.model"] + " lr=" + runs["params.optimizer.lr"] + ", "
             + runs["params.trainer.epochs"] + " epochs")
    if "tags.label" in runs:
        group = runs["tags.label"].where(runs["tags.label"].fillna("") != "", group)
    runs = runs.assign(group=group)
    rows = ["| runs | seeds | test acc % (mean ± sd) | min | best val acc % | train time s "
            "(mean) |", "|---|---:|---:|---:|---:|---:|"]
    for group, g in runs.groupby("group", sort=True):
        test, val = 100 * g["metrics.test_acc"], 100 * g["metrics.best_val_acc"]
        sd = f" ± {test.std():.2f}" if len(g) > 1 else ""
        rows.append(f"| {group} | {len(g)} | {test.mean():.2f}{sd} | {test.min():.2f} | "
                    f"{val.mean():.2f} | {g['metrics.train_time_s'].mean():.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
