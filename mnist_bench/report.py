"""``python -m mnist_bench.report``: rebuild the report's Tables 1-4 and figures from MLflow runs.

Runs are selected by sweep id, by experiment, or by default the latest sweep. Every table is
written as Markdown and CSV beside the report's published numbers, the figures as PNG, and an
``index.md`` ties them together. The same folder is logged as an MLflow run tagged
``run_type=report``. Failed or diverged runs stay in the tables, marked as such.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from mnist_bench import plots
from mnist_bench.tracking import open_store, tracking_uri

MODELS = {  # model name -> (title, table number of the report it reproduces)
    "mlp": ("MLP", 1),
    "lenet": ("LeNet-5", 2),
    "resnet18": ("ResNet-18", 3),
    "googlenet": ("GoogLeNet", 2),
}
ACCURACIES = ("train_acc", "val_acc", "test_acc")
CURVE_METRICS = ("train_loss", "train_acc", "val_acc")
NOT_TRAINING = ("report", "tsne")
CELL_FORMATS = {"train_time_s": (1, 1, 0), "test_loss": (1, 3, 3)}  # scale, digits, paper digits


class ReportError(RuntimeError):
    """Nothing to report on; the message says why."""


def published() -> pd.DataFrame:
    """The report's Tables 1-4 (fractions, not percent); see ``published/README.md``."""
    with resources.files("mnist_bench.published").joinpath("paper_tables.csv").open() as fh:
        return pd.read_csv(fh)


def latest_sweep_id(experiment: str) -> str:
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.sweep_id != ''",
                              order_by=["start_time DESC"], max_results=1)
    if runs.empty:
        raise ReportError(f"no sweep found in experiment {experiment!r}: run one with "
                          "`python -m mnist_bench --multirun ...` or pass --experiment/--sweep-id")
    return runs.iloc[0]["tags.sweep_id"]


def load_runs(experiment: str, sweep_id: str | None) -> pd.DataFrame:
    """Training runs of the selection, one row per run, with ``model``, ``lr`` and ``outcome``."""
    filter_string = f"tags.sweep_id = '{sweep_id}'" if sweep_id else ""
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)
    if not runs.empty and "tags.run_type" in runs:
        runs = runs[~runs["tags.run_type"].isin(NOT_TRAINING)]
    if runs.empty or "tags.model" not in runs:
        where = f"sweep {sweep_id!r}" if sweep_id else "it"
        raise ReportError(f"no training runs found for {where} in experiment {experiment!r} "
                          f"at {mlflow.get_tracking_uri()}")
    runs = runs.assign(model=runs["tags.model"], lr=runs["params.optimizer.lr"].astype(float),
                       outcome=runs.apply(_outcome, axis=1))
    for metric in (*ACCURACIES, "train_time_s", "test_loss", "val_loss"):
        runs[metric] = runs.get(f"metrics.{metric}")
    order = {name: i for i, name in enumerate(MODELS)}
    runs = runs.assign(model_order=runs["model"].map(order).fillna(len(order)))
    return runs.sort_values(["model_order", "model", "lr"], ascending=[True, True, False])


def _outcome(run: pd.Series) -> str:
    if run.get("tags.diverged") == "true":
        return "diverged"
    return {"FINISHED": "ok", "FAILED": "failed", "KILLED": "killed"}.get(run["status"], "running")


def lr_table(runs: pd.DataFrame, model: str, paper: pd.DataFrame) -> pd.DataFrame:
    """Tables 1-3: one row per learning rate; measured beside published, delta in points."""
    title, number = MODELS.get(model, (model, None))
    rows = runs[runs["model"] == model]
    table = rows.groupby("lr", sort=False).agg(
        runs=("run_id", "size"), outcome=("outcome", _worst),
        **{m: (m, "mean") for m in ACCURACIES}).reset_index()
    ref = paper[(paper["table"] == number) & paper["lr"].notna()]
    ref = ref.drop_duplicates("lr").set_index("lr")[list(ACCURACIES)]
    return _with_published(table, ref.rename(columns=lambda c: f"paper_{c}"), on="lr")


def _worst(outcomes: pd.Series) -> str:
    """A cell is 'ok' only if every run behind it finished."""
    bad = [o for o in outcomes if o != "ok"]
    return bad[0] if bad else "ok"


def _with_published(table: pd.DataFrame, ref: pd.DataFrame, on: str) -> pd.DataFrame:
    merged = table.merge(ref, how="left", left_on=on, right_index=True)
    for column in ref.columns:
        measured = column.removeprefix("paper_")
        merged[f"delta_{measured}"] = merged[measured] - merged[column]
    return merged


def best_table(runs: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Table 4: per model, the learning rate with the best validation accuracy."""
    finished = runs[runs["outcome"] == "ok"]
    if finished.empty:
        raise ReportError("every selected run failed or diverged; no Table 4 can be built")
    best = finished.loc[finished.groupby("model", sort=False)["val_acc"].idxmax()]
    table = best[["model", "lr", *ACCURACIES, "train_time_s", "test_loss"]].reset_index(drop=True)
    ref = paper[paper["table"] == 4].set_index("model")
    ref = ref[[*ACCURACIES, "train_time_s", "loss"]].rename(columns={"loss": "test_loss"})
    return _with_published(table, ref.rename(columns=lambda c: f"paper_{c}"), on="model")


def histories(client: MlflowClient, run_ids: list[str]) -> dict[str, list[dict[str, float]]]:
    """Per run, one dict of curve metrics per epoch (step), in epoch order."""
    result = {}
    for run_id in run_ids:
        by_step: dict[int, dict[str, float]] = {}
        for metric in CURVE_METRICS:
            for point in client.get_metric_history(run_id, metric):
                by_step.setdefault(point.step, {})[metric] = point.value
        result[run_id] = [by_step[step] for step in sorted(by_step)]
    return result


def _markdown(table: pd.DataFrame) -> str:
    """Compact view: each measured value followed by (published, difference).

    Accuracies are shown in percent and differences in percentage points; a failed or diverged
    run shows its outcome instead of numbers. The CSV keeps every column unformatted.
    """
    shown = pd.DataFrame({k: table[k] for k in ("model", "lr", "runs", "outcome") if k in table})
    for metric in (*ACCURACIES, "train_time_s", "test_loss"):
        if metric in table:
            shown[metric] = [_cell(row, metric) for _, row in table.iterrows()]
    return shown.to_markdown(index=False)


def _cell(row: pd.Series, metric: str) -> str:
    if row.get("outcome", "ok") != "ok":
        return str(row["outcome"])
    scale, digits, paper_digits = CELL_FORMATS.get(metric, (100, 2, 1))
    value, text = row[metric], ""
    if pd.notna(value):
        text = f"{scale * value:.{digits}f}"
    paper = row.get(f"paper_{metric}")
    if pd.notna(paper):
        delta = scale * row[f"delta_{metric}"]
        text += f" ({scale * paper:.{paper_digits}f}, {delta:+.{digits}f})"
    return text


def write_table(table: pd.DataFrame, out: Path, name: str) -> str:
    table.to_csv(out / f"{name}.csv", index=False)
    text = _markdown(table)
    (out / f"{name}.md").write_text(text + "\n")
    return text


def run_labels(rows: pd.DataFrame) -> list[str]:
    """One legend label per run: ``lr=<lr>``, plus the run id's start where runs share an lr
    (``--all-runs`` over several sweeps), so that no run hides another in a figure."""
    labels = [f"lr={lr:g}" for lr in rows["lr"]]
    return [f"{label} ({run_id[:7]})" if labels.count(label) > 1 else label
            for label, run_id in zip(labels, rows["run_id"], strict=True)]


def curves_by_model(runs: pd.DataFrame,
                    curves: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list]]:
    """``{model title: {run label: per-epoch history}}``, the input of the curve figures."""
    return {MODELS.get(model, (model,))[0]:
            dict(zip(run_labels(rows), (curves[run_id] for run_id in rows["run_id"]),
                     strict=True))
            for model, rows in runs.groupby("model", sort=False)}


def write_figures(runs: pd.DataFrame, table4: pd.DataFrame, curves: dict, out: Path) -> list[str]:
    """Per model curves and time bars (Figures 18-27), plus an overview; returns file names."""
    names = []
    overview = curves_by_model(runs, curves)
    for (model, rows), (title, by_lr) in zip(runs.groupby("model", sort=False),
                                             overview.items(), strict=True):
        plots.save(plots.plot_curves(by_lr, CURVE_METRICS, title=title),
                   out / f"{model}_curves.png")
        times = {label: r.train_time_s for label, r in zip(run_labels(rows), rows.itertuples(),
                                                           strict=True) if r.outcome == "ok"}
        plots.save(plots.plot_bars(times, "training time (s)", f"{title}: training time"),
                   out / f"{model}_train_time.png")
        names += [f"{model}_curves.png", f"{model}_train_time.png"]
    plots.save(plots.plot_overview(overview), out / "overview_val_acc.png")
    best_times = dict(zip(table4["model"], table4["train_time_s"], strict=True))
    plots.save(plots.plot_bars(best_times, "training time (s)", "Training time at the best lr"),
               out / "train_time_best.png")
    return [*names, "overview_val_acc.png", "train_time_best.png"]


def build_report(runs: pd.DataFrame, out: Path, selection: str) -> Path:
    """Write tables, figures and ``index.md`` for ``runs`` into ``out``; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    paper = published()
    sections = [f"# MNIST model comparison: {selection}\n",
                f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {len(runs)} "
                f"MLflow runs at `{mlflow.get_tracking_uri()}`. "
                "Each cell reads *measured (published, measured - published)*; accuracies in "
                "percent, differences in percentage points. The CSV files hold the raw columns.\n"]
    for model in runs["model"].unique():
        title, number = MODELS.get(model, (model, "?"))
        text = write_table(lr_table(runs, model, paper), out, f"table_{model}")
        sections.append(f"## {title}: learning rates (report Table {number})\n\n{text}\n")
    table4 = best_table(runs, paper)
    text = write_table(table4, out, "table4_best")
    sections.append("## Best learning rate per model (report Table 4)\n\nChosen by final "
                    f"validation accuracy; loss is the test cross-entropy.\n\n{text}\n")
    curves = histories(MlflowClient(), runs["run_id"].tolist())
    figures = write_figures(runs, table4, curves, out)
    sections.append("## Figures\n\n" + "\n\n".join(f"![{f}]({f})" for f in figures) + "\n")
    index = out / "index.md"
    index.write_text("\n".join(sections))
    return index


def log_report(out: Path, experiment: str, selection: str, sweep_id: str | None) -> str:
    tags = {"run_type": "report", "report_for": selection}
    if sweep_id:
        tags["report_for_sweep"] = sweep_id
    open_store(mlflow.get_tracking_uri(), experiment)
    with mlflow.start_run(run_name=f"report: {selection}", tags=tags) as run:
        mlflow.log_artifacts(str(out), "report")
    return run.info.run_id


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.report",
        description="Rebuild the report's Tables 1-4 and figures from tracked MLflow runs, "
                    "beside the published numbers. Default selection: the latest sweep.")
    parser.add_argument("--sweep-id", help="select the runs tagged with this sweep_id")
    parser.add_argument("--all-runs", action="store_true",
                        help="select every training run of the experiment instead of one sweep")
    parser.add_argument("--experiment", default="mnist_bench", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: reports/<sweep id or experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mlflow.set_tracking_uri(tracking_uri(args.tracking_uri, Path.cwd()))
    try:
        if mlflow.get_experiment_by_name(args.experiment) is None:
            raise ReportError(f"experiment {args.experiment!r} does not exist at "
                              f"{mlflow.get_tracking_uri()}")
        sweep_id = None if args.all_runs else args.sweep_id or latest_sweep_id(args.experiment)
        selection = f"sweep {sweep_id}" if sweep_id else f"experiment {args.experiment}"
        runs = load_runs(args.experiment, sweep_id)
        out = args.out or Path("reports") / (sweep_id or args.experiment).replace("/", "_")
        index = build_report(runs, out, selection)
    except ReportError as err:
        print(f"mnist_bench.report: {err}", file=sys.stderr)
        return 2
    run_id = "" if args.no_log else log_report(out, args.experiment, selection, sweep_id)
    failed = (runs["outcome"] != "ok").sum()
    print(f"report for {selection}: {len(runs)} runs ({failed} failed or diverged) -> {index}"
          + (f" (MLflow run {run_id})" if run_id else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
