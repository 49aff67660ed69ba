"""The report's Tables 1-4 and figures, rebuilt from MLflow runs (``python -m mnist_bench.report``
parses its command line in :mod:`mnist_bench.report`, then runs :func:`make_report`).

Runs are selected by sweep id, by experiment, or by default the latest sweep. Every table is
written as Markdown and CSV beside the report's published numbers, the figures as PNG, and an
``index.md`` ties them together. The same folder is logged as an MLflow run tagged
``run_type=report``. Failed or diverged runs stay in the tables, marked as such.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from mnist_bench import plots, seed_stats
from mnist_bench.cli import UserError
from mnist_bench.tracking_store import open_store, read_store

MODELS = {  # model name -> (title, table number of the report it reproduces)
    "mlp": ("MLP", 1),
    "lenet": ("LeNet-5", 2),
    "resnet18": ("ResNet-18", 3),
    "googlenet": ("GoogLeNet", 2),
}
ACCURACIES = ("train_acc", "val_acc", "test_acc")
PAPER_EPOCHS = 10  # the report's learning-rate sweep
CURVE_METRICS = ("train_loss", "train_acc", "val_acc")
NOT_TRAINING = ("report", "tsne", "sweep", "study")
METRIC_BOUNDS = {**dict.fromkeys(ACCURACIES, (0.0, 1.0)), "train_time_s": (0.0, math.inf),
                 "test_loss": (0.0, math.inf)}
# Parameters that change what a run learns. The others (paths, threads, logging, kernels) change
# only where a run ran or how fast, so the repeats of one cell may differ in them.
SETTING_PREFIXES = ("model.", "optimizer.", "trainer.", "data.", "augment.", "device.amp")
NOT_SETTINGS = {"trainer.seed", "trainer.log_every_n_steps", "trainer.test_every_epoch",
                "trainer.eval_batch_size", "trainer.deterministic", "data.root",
                "data.num_workers", "data.loader", "data.verify_md5", "optimizer.foreach",
                "optimizer.fused"}
NOT_LOGGED = "not logged"  # a finished run without the metric, e.g. one run without a test pass
CELL_FORMATS = {"train_time_s": (1, 1, 0), "test_loss": (1, 3, 3)}  # scale, digits, paper digits


SEEDS_LEGEND = (
    "Cells with several runs (seeds) read *mean ± sd [95 % interval of the mean] (published: "
    "inside or outside that interval)*; the interval is Student's t, mean ± t(0.975, n-1) sd / "
    "sqrt(n), cut at what the metric can take (0-100 % for an accuracy). Accuracies in "
    "percent. Statistics cover the finished runs; `outcome` counts how the others ended. A "
    "cell whose runs split into some that learned (final validation accuracy above 50 %) and "
    "some that stayed at chance (below 20 %) is shown as *bimodal* with each group's count "
    "and mean, not one misleading mean. In Table 4, `verdict` says whether the runner-up "
    "learning rate's mean lies within the best one's interval (*tied*).")


class ReportError(RuntimeError):
    """Nothing to report on; the message says why."""


def published() -> pd.DataFrame:
    """The report's Tables 1-4 (fractions, not percent); see ``published/README.md``."""
    with resources.files("mnist_bench.published").joinpath("paper_tables.csv").open() as fh:
        return pd.read_csv(fh)


def latest_sweep_id(experiment: str) -> str:
    """The sweep of the newest training run (a sweep's parent run may hold no job's)."""
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.sweep_id != ''",
                              order_by=["start_time DESC"], max_results=200)
    if not runs.empty and "tags.run_type" in runs:
        runs = runs[~runs["tags.run_type"].isin(NOT_TRAINING)]
    if runs.empty:
        raise ReportError(f"no sweep found in experiment {experiment!r}: run one with "
                          "`python -m mnist_bench --multirun ...` or pass --experiment/--sweep-id")
    return runs.iloc[0]["tags.sweep_id"]


def load_runs(experiment: str, sweep_ids: str | list[str] | None) -> pd.DataFrame:
    """Training runs of the selection (one or more sweeps, or the whole experiment), one row
    per run, with ``model``, ``base_model``, ``epochs``, ``lr`` and ``outcome``.

    Where the selection mixes epoch counts (the report's 10-epoch sweep and its 25-epoch
    Table 4 protocol), runs trained for other than 10 epochs are labelled ``<model> (<n>
    epochs)`` and form tables, curves and Table 4 rows of their own; so do runs with a
    ``tracking.label`` (the presets'), under that label.
    """
    sweep_ids = [sweep_ids] if isinstance(sweep_ids, str) else sweep_ids
    # no sweep: the whole experiment, single runs (which have no sweep_id tag) included
    filters = [f"tags.sweep_id = '{sweep_id}'" for sweep_id in sweep_ids] if sweep_ids else [""]
    runs = pd.concat([mlflow.search_runs(experiment_names=[experiment], filter_string=f)
                      for f in filters], ignore_index=True)
    if not runs.empty and "tags.run_type" in runs:
        runs = runs[~runs["tags.run_type"].isin(NOT_TRAINING)]
    if runs.empty or "tags.model" not in runs:
        where = f"sweep {', '.join(map(repr, sweep_ids))}" if sweep_ids else "it"
        raise ReportError(f"no training runs found for {where} in experiment {experiment!r} "
                          f"at {mlflow.get_tracking_uri()}")
    runs = _with_parameters(runs)
    epochs = runs["params.trainer.epochs"].astype(int)
    model = runs["tags.model"]
    if epochs.nunique() > 1:
        model = model.where(epochs == PAPER_EPOCHS, model + " (" + epochs.astype(str) + " epochs)")
    if "tags.label" in runs:  # a preset's runs (tracking.label): rows of their own
        model = runs["tags.label"].where(runs["tags.label"].fillna("") != "", model)
    runs = runs.assign(model=model, base_model=runs["tags.model"], epochs=epochs,
                       lr=runs["params.optimizer.lr"].astype(float),
                       outcome=runs.apply(_outcome, axis=1))
    for metric in (*ACCURACIES, "train_time_s", "test_loss", "val_loss"):
        runs[metric] = runs.get(f"metrics.{metric}")
    order = {name: i for i, name in enumerate(MODELS)}
    runs = runs.assign(model_order=runs["model"].map(order).fillna(len(order)))
    return runs.sort_values(["model_order", "model", "lr"], ascending=[True, True, False])


def _with_parameters(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that logged their parameters; one that has none yet is still starting, or was
    stopped while it started, and has no learning rate to be reported under."""
    required = ("params.trainer.epochs", "params.optimizer.lr")
    starting = pd.concat([runs.get(k, pd.Series(None, index=runs.index)).isna()
                          for k in required], axis=1).any(axis=1)
    if starting.any():
        n = int(starting.sum())
        print(f"mnist_bench.report: skipping {n} run{'s' * (n > 1)} without parameters (still "
              f"starting, or stopped while starting): {', '.join(runs.loc[starting, 'run_id'])}",
              file=sys.stderr)
    if starting.all():
        raise ReportError("no run of the selection has logged its parameters yet")
    return runs[~starting]


def _outcome(run: pd.Series) -> str:
    if run.get("tags.diverged") == "true":
        return "diverged"
    if run.get("tags.pruned") == "true":  # an Optuna trial stopped early
        return "pruned"
    return {"FINISHED": "ok", "FAILED": "failed", "KILLED": "killed"}.get(run["status"], "running")


def has_seeds(runs: pd.DataFrame) -> bool:
    """Whether some cell (model, learning rate) holds several runs, e.g. one per seed."""
    return bool(runs.groupby(["model", "lr"]).size().max() > 1)


def lr_table(runs: pd.DataFrame, model: str, paper: pd.DataFrame) -> pd.DataFrame:
    """Tables 1-3: one row per learning rate; measured beside published, delta in points.

    With several runs per learning rate, each row holds their statistics (:func:`seed_cells`).
    """
    title, number = MODELS.get(model, (model, None))
    rows = runs[runs["model"] == model]
    if has_seeds(runs):
        table = seed_cells(rows, ACCURACIES)
    else:
        table = rows.groupby("lr", sort=False).agg(
            runs=("run_id", "size"), outcome=("outcome", _worst),
            **{m: (m, "mean") for m in ACCURACIES}).reset_index()
    ref = paper[(paper["table"] == number) & paper["lr"].notna()]
    ref = ref.drop_duplicates("lr").set_index("lr")[list(ACCURACIES)]
    return _with_published(table, ref.rename(columns=lambda c: f"paper_{c}"), on="lr")


def seed_cells(rows: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per learning rate over its finished runs: mean (the metric's own column), sd,
    min, max and 95 % interval of the mean of each metric, and the runs that learned and that
    stayed at chance; a cell holding both is ``bimodal``, with each group's mean too."""
    cells = []
    for lr, cell in rows.groupby("lr", sort=False):
        ok = cell[cell["outcome"] == "ok"]
        groups = _modes(ok)
        learned, at_chance = len(groups["learned"]), len(groups["chance"])
        row = {"lr": lr, "runs": len(cell), "outcome": _outcomes(cell["outcome"]),
               "learned": learned, "at_chance": at_chance,
               "in_between": len(groups["between"]), "bimodal": learned > 0 and at_chance > 0}
        for metric in metrics:
            stats = seed_stats.summary(ok[metric].tolist(), bounds=METRIC_BOUNDS[metric])
            row |= {metric: stats["mean"], **{f"{metric}_{k}": stats[k] for k in
                                              ("sd", "min", "max", "ci_low", "ci_high")}}
            if row["bimodal"]:
                for group, members in groups.items():
                    row[f"{metric}_{group}"] = members[metric].mean()
        cells.append(row)
    return pd.DataFrame(cells)


def mixed_settings(runs: pd.DataFrame) -> list[str]:
    """One line per cell whose runs differ in a setting besides their seed (e.g. the batch
    size): its statistics treat them as repeats of one setting, which they are not."""
    settings = [c for c in runs if c.startswith("params.")
                and c.removeprefix("params.").startswith(SETTING_PREFIXES)
                and c.removeprefix("params.") not in NOT_SETTINGS]
    notes = []
    for (model, lr), cell in runs.groupby(["model", "lr"], sort=False):
        differ = [c.removeprefix("params.") for c in settings if cell[c].nunique(dropna=False) > 1]
        if differ:
            notes.append(f"{model} lr={lr:g}: its {len(cell)} runs differ in "
                         f"{', '.join(differ)}, not only in their seed")
    return notes


def _modes(ok: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Finished runs by their final validation accuracy: ``learned``, ``chance`` and
    ``between`` (:func:`seed_stats.modes`)."""
    return {group: ok[mask] for group, mask in seed_stats.modes(ok["val_acc"]).items()}


def _outcomes(outcomes: pd.Series) -> str:
    """``ok``, or how many runs ended how, e.g. ``4 ok, 1 diverged``."""
    counts = outcomes.value_counts()
    return "ok" if set(counts.index) == {"ok"} else ", ".join(f"{n} {o}" for o, n in
                                                             counts.items())


def _worst(outcomes: pd.Series) -> str:
    """A cell is 'ok' only if every run behind it finished."""
    bad = [o for o in outcomes if o != "ok"]
    return bad[0] if bad else "ok"


def _with_published(table: pd.DataFrame, ref: pd.DataFrame, on: str) -> pd.DataFrame:
    """The published columns ``paper_<m>``, ``delta_<m>`` (measured - published) and, with an
    interval, ``paper_in_ci_<m>``: whether the published value lies in it."""
    merged = table.merge(ref, how="left", left_on=on, right_index=True)
    for column in ref.columns:
        measured = column.removeprefix("paper_")
        merged[f"delta_{measured}"] = merged[measured] - merged[column]
        if f"{measured}_ci_low" in merged:
            inside = merged[column].between(merged[f"{measured}_ci_low"],
                                            merged[f"{measured}_ci_high"])
            judged = merged[column].notna() & merged[f"{measured}_ci_low"].notna() & \
                ~merged.get("bimodal", pd.Series(False, index=merged.index)).fillna(False)
            merged[f"paper_in_ci_{measured}"] = inside.where(judged)
    return merged


def best_table(runs: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Table 4: per model, the learning rate with the best (mean) validation accuracy; with
    seeds, ``verdict`` says whether the runner-up's mean lies within the best one's interval."""
    best = _best_cell if has_seeds(runs) else _best_run
    table = pd.DataFrame([best(model, rows) for model, rows in runs.groupby("model", sort=False)])
    # each row beside the published row of the network whose learning-rate table it is compared
    # with: "lenet (25 epochs)" beside LeNet's, and GoogLeNet beside the report's "LeNet" too
    base = runs.get("base_model", runs["model"])
    table.insert(1, "base_model", table["model"].map(dict(zip(runs["model"], base,
                                                              strict=True))))
    table_models = paper[paper["table"] != 4].drop_duplicates("table").set_index("table")["model"]
    table.insert(2, "published_model", [table_models.get(MODELS.get(b, (b, None))[1])
                                        for b in table["base_model"]])
    ref = paper[paper["table"] == 4].set_index("model")
    ref = ref[[*ACCURACIES, "train_time_s", "loss"]].rename(columns={"loss": "test_loss"})
    return _with_published(table, ref.rename(columns=lambda c: f"paper_{c}"),
                           on="published_model")


def _best_run(model: str, rows: pd.DataFrame) -> dict:
    """One run per cell: the finished run with the best validation accuracy, or, where none
    finished, how the model's runs ended."""
    ranked = rows[rows["outcome"] == "ok"].sort_values("val_acc", ascending=False)
    if ranked.empty:
        return {"model": model, "outcome": _worst(rows["outcome"])}
    return ranked.iloc[0][["model", "lr", "outcome", *ACCURACIES, "train_time_s",
                           "test_loss"]].to_dict()


def _best_cell(model: str, rows: pd.DataFrame) -> dict:
    """Several runs per cell: the cell with the best mean validation accuracy (its failed runs
    counted in ``runs`` and ``outcome``), and whether the runner-up ties with it."""
    cells = seed_cells(rows, (*ACCURACIES, "train_time_s", "test_loss"))
    ranked = cells.sort_values("val_acc", ascending=False, na_position="last")
    best = ranked.iloc[0]
    return {"model": model, **best.to_dict(), "verdict": _verdict(best, ranked.iloc[1:2])}


def _verdict(best: pd.Series, runner_up: pd.DataFrame) -> str:
    """``best``, or ``tied with lr=…`` where either cell's mean lies in the other's interval."""
    if pd.isna(best["val_acc"]):
        return "no finished run"
    if runner_up.empty or pd.isna(runner_up.iloc[0]["val_acc"]):
        return "only learning rate"
    other = runner_up.iloc[0]
    if pd.isna(best["val_acc_ci_low"]) and pd.isna(other["val_acc_ci_high"]):
        return "best (one run: no interval)"
    if other["val_acc"] >= best["val_acc_ci_low"] or best["val_acc"] <= other["val_acc_ci_high"]:
        return f"tied with lr={other['lr']:g}"
    return "best"


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
    columns = ("model", "lr", "runs", "outcome", "verdict")
    shown = pd.DataFrame({k: table[k] for k in columns if k in table})
    for metric in (*ACCURACIES, "train_time_s", "test_loss"):
        if metric in table:
            cell = _seed_cell if f"{metric}_sd" in table else _cell
            shown[metric] = [cell(row, metric) for _, row in table.iterrows()]
    return shown.to_markdown(index=False)


def _seed_cell(row: pd.Series, metric: str) -> str:
    """``mean ± sd [95 % interval] (published: inside/outside)``, or the two groups of a
    bimodal cell, or the outcome where no run finished."""
    scale, digits, paper_digits = CELL_FORMATS.get(metric, (100, 2, 1))

    def number(key: str) -> str:
        return f"{scale * row[key]:.{digits}f}"

    paper = row.get(f"paper_{metric}")
    published = f" ({scale * paper:.{paper_digits}f})" if pd.notna(paper) else ""
    if row.get("bimodal") and metric in ACCURACIES:
        between = (f", {row['in_between']} in between ({number(f'{metric}_between')})"
                   if row["in_between"] else "")
        return (f"bimodal: {row['learned']} learned ({number(f'{metric}_learned')}), "
                f"{row['at_chance']} at chance ({number(f'{metric}_chance')}){between}"
                + published)
    if pd.isna(row[metric]):
        return NOT_LOGGED if row["outcome"] == "ok" else str(row["outcome"])
    text = number(metric)
    has_interval = pd.notna(row[f"{metric}_ci_low"])
    if has_interval:
        text += (f" ± {number(f'{metric}_sd')} "
                 f"[{number(f'{metric}_ci_low')}, {number(f'{metric}_ci_high')}]")
    if pd.notna(paper):
        if has_interval:
            where = "inside" if row[f"paper_in_ci_{metric}"] else "outside"
        else:
            where = f"{scale * row[f'delta_{metric}']:+.{digits}f}"
        text += f" ({scale * paper:.{paper_digits}f}: {where})"
    return text


def _cell(row: pd.Series, metric: str) -> str:
    if row.get("outcome", "ok") != "ok":
        return str(row["outcome"])
    scale, digits, paper_digits = CELL_FORMATS.get(metric, (100, 2, 1))
    value = row[metric]
    if pd.isna(value):
        return NOT_LOGGED
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


def model_title(runs: pd.DataFrame, model: str) -> str:
    """``LeNet-5``; for an epoch variant ``LeNet-5, 25 epochs``; for labelled runs
    ``best_lenet (LeNet-5, 30 epochs)``."""
    rows = runs[runs["model"] == model]
    base = rows.get("base_model", rows["model"]).iloc[0]
    title = MODELS.get(base, (base,))[0]
    if "tags.label" in rows and rows["tags.label"].fillna("").eq(model).all():
        return f"{model} ({title}, {rows['epochs'].iloc[0]} epochs)"
    if model != base:
        return f"{title}, {rows['epochs'].iloc[0]} epochs"
    return title


def section_title(runs: pd.DataFrame, model: str) -> str:
    """``LeNet-5: learning rates (report Table 2)``; an epoch variant or labelled runs have no
    table in the report."""
    number = MODELS.get(model, (model, None))[1]
    epochs = runs.loc[runs["model"] == model].get("epochs", pd.Series([PAPER_EPOCHS])).iloc[0]
    if not number:
        return f"{model_title(runs, model)}: learning rates"
    if epochs != PAPER_EPOCHS:
        return (f"{model_title(runs, model)}: learning rates ({epochs} epochs; report Table "
                f"{number}: {PAPER_EPOCHS} epochs)")
    return f"{model_title(runs, model)}: learning rates (report Table {number})"


def slug(model: str) -> str:
    """A file name part: ``lenet (25 epochs)`` becomes ``lenet_25_epochs``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", model).strip("_")


def lr_label(lr: float, n_runs: int, group: str = "") -> str:
    """``lr=0.01 (5 runs)``; with a group, e.g. ``lr=0.01 learned (4 runs)``."""
    return f"lr={lr:g}" + (f" {group}" if group else "") + (f" ({n_runs} runs)" if n_runs > 1
                                                              else "")


def curves_by_model(runs: pd.DataFrame,
                    curves: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list]]:
    """``{model title: {lr label: [per-epoch history of each run at that lr]}}``, the input of
    the curve figures: one line per learning rate, the mean over its runs (seeds) in a band."""
    return {model_title(runs, model):
            {label: [curves[run_id] for run_id in group["run_id"]]
             for lr, cell in rows.groupby("lr", sort=False)
             for label, group in _curve_groups(lr, cell).items()}
            for model, rows in runs.groupby("model", sort=False)}


def _curve_groups(lr: float, cell: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The lines of one learning rate: its finished runs, as the tables count them; a bimodal
    cell's groups apart, since their mean would describe none of them; where no run finished,
    the runs as far as they got."""
    ok = cell[cell["outcome"] == "ok"]
    if ok.empty:
        return {lr_label(lr, len(cell), _worst(cell["outcome"])): cell}
    groups = _modes(ok)
    if groups["learned"].empty or groups["chance"].empty:
        return {lr_label(lr, len(ok)): ok}
    names = {"learned": "learned", "chance": "at chance", "between": "in between"}
    return {lr_label(lr, len(members), names[group]): members
            for group, members in groups.items() if not members.empty}


def _time_bars(rows: pd.DataFrame) -> tuple[dict, dict]:
    """Mean training time per learning rate over finished runs, and its sd where runs repeat."""
    ok = rows[rows["outcome"] == "ok"].groupby("lr", sort=False)["train_time_s"]
    means, sds, sizes = ok.mean(), ok.std(), ok.size()
    names = {lr: lr_label(lr, sizes[lr]) for lr in means.index}
    return ({names[v]: t for v, t in means.items()},
            {names[v]: s for v, s in sds.items() if pd.notna(s)})


def write_figures(runs: pd.DataFrame, table4: pd.DataFrame, curves: dict, out: Path) -> list[str]:
    """Per model curves and time bars (Figures 18-27), plus an overview; returns file names."""
    names = []
    overview = curves_by_model(runs, curves)
    for (model, rows), (title, by_lr) in zip(runs.groupby("model", sort=False),
                                             overview.items(), strict=True):
        plots.save(plots.plot_curves(by_lr, CURVE_METRICS, title=title),
                   out / f"{slug(model)}_curves.png")
        times, errors = _time_bars(rows)
        plots.save(plots.plot_bars(times, "training time (s)", f"{title}: training time",
                                   errors), out / f"{slug(model)}_train_time.png")
        names += [f"{slug(model)}_curves.png", f"{slug(model)}_train_time.png"]
    plots.save(plots.plot_overview(overview), out / "overview_val_acc.png")
    timed = table4[table4["train_time_s"].notna()]
    bars = [f"{model_title(runs, m)}\nlr={lr:g}" for m, lr in zip(timed["model"], timed["lr"],
                                                                   strict=True)]
    best_sds = timed.get("train_time_s_sd", pd.Series(index=timed.index, dtype=float))
    plots.save(plots.plot_bars(dict(zip(bars, timed["train_time_s"], strict=True)),
                               "training time (s)", "Training time at the best lr",
                               {k: v for k, v in zip(bars, best_sds, strict=True)
                                if pd.notna(v)}),
               out / "train_time_best.png")
    return [*names, "overview_val_acc.png", "train_time_best.png"]


def build_report(runs: pd.DataFrame, out: Path, selection: str) -> Path:
    """Write tables, figures and ``index.md`` for ``runs`` into ``out``; returns the index."""
    if not (runs["outcome"] == "ok").any():
        raise ReportError(f"every selected run ended {_outcomes(runs['outcome'])}: there is "
                          "nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    paper = published()
    sections = [f"# MNIST model comparison: {selection}\n",
                f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {len(runs)} "
                f"MLflow runs at `{mlflow.get_tracking_uri()}`. "
                + (SEEDS_LEGEND if has_seeds(runs) else
                   "Each cell reads *measured (published, measured - published)*; accuracies in "
                   "percent, differences in percentage points.")
                + " The CSV files hold the raw columns.\n"]
    if mixed := mixed_settings(runs):
        sections.append("**Caution:** the statistics of a cell treat its runs as repeats of one "
                        "setting, but " + "; ".join(mixed) + ".\n")
    for model in runs["model"].unique():
        text = write_table(lr_table(runs, model, paper), out, f"table_{slug(model)}")
        sections.append(f"## {section_title(runs, model)}\n\n{text}\n")
    table4 = best_table(runs, paper)
    text = write_table(table4, out, "table4_best")
    sections.append("## Best learning rate per model (report Table 4)\n\nChosen by final "
                    "validation accuracy (its mean over the runs of a cell); loss is the test "
                    "cross-entropy. Each row faces the published row of the network whose "
                    "learning-rate table it is compared with: GoogLeNet faces the report's "
                    f"\"LeNet\".\n\n{text}\n")
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


@dataclass
class Selection:
    runs: pd.DataFrame
    description: str       # "sweep <id>" or "experiment <name>"
    sweep_id: str | None   # the sweep ids joined by " + "; None for a whole experiment


def select_runs(args: argparse.Namespace) -> Selection:
    """The runs that :func:`~mnist_bench.selection_args.add_selection_args`' options select,
    from the store they name."""
    try:
        read_store(args)
    except UserError as err:
        raise ReportError(str(err)) from None
    if mlflow.get_experiment_by_name(args.experiment) is None:
        raise ReportError(f"experiment {args.experiment!r} does not exist at "
                          f"{mlflow.get_tracking_uri()}")
    if any("'" in sweep_id for sweep_id in args.sweep_id or []):
        raise ReportError("--sweep-id: sweep ids hold no quote ('); check the value")
    sweep_ids = None if args.all_runs else args.sweep_id or [latest_sweep_id(args.experiment)]
    sweep_ids = list(dict.fromkeys(sweep_ids)) if sweep_ids else None  # each sweep once
    sweep_id = " + ".join(sweep_ids) if sweep_ids else None
    description = f"sweep {sweep_id}" if sweep_id else f"experiment {args.experiment}"
    return Selection(load_runs(args.experiment, sweep_ids), description, sweep_id)


def make_report(args: argparse.Namespace) -> int:
    """The report of the runs ``args`` select, logged unless ``--no-log``; the exit status."""
    try:
        chosen = select_runs(args)
        out = args.out or Path("reports") / (chosen.sweep_id or args.experiment).replace(
            "/", "_").replace(" + ", "+")
        index = build_report(chosen.runs, out, chosen.description)
        for note in mixed_settings(chosen.runs):
            print(f"mnist_bench.report: caution: {note}", file=sys.stderr)
    except ReportError as err:
        print(f"mnist_bench.report: {err}", file=sys.stderr)
        return 2
    run_id = "" if args.no_log else log_report(out, args.experiment, chosen.description,
                                               chosen.sweep_id)
    outcomes = _outcomes(chosen.runs["outcome"])
    print(f"report for {chosen.description}: {len(chosen.runs)} runs "
          f"({'all finished' if outcomes == 'ok' else outcomes}) -> {index}"
          + (f" (MLflow run {run_id})" if run_id else ""))
    return 0
