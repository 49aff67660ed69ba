"""Optuna studies of ``hydra/sweeper=optuna``: their storage, sampler and pruner, and what a study
leaves behind (best trial, counts, Optuna's plots, the best configuration as an override line
and as an experiment YAML).

``python -m mnist_bench.study`` lists the studies of a storage, or summarises one of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from mnist_bench.cli import CONF_DIR, UserError, first_line, print_error
from mnist_bench.search_space import SearchSpace
from mnist_bench.store_lock import sqlite_lock

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs its own lines
# Heartbeats are "experimental" and said to be meant for study.optimize; the sweeper's ask-and-tell
# loop records them itself (search.heartbeats).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
STUDY = "study"  # run_type tag of a study's parent MLflow run
PARENT_RUN = "mlflow_parent_run_id"  # study user attribute
TRIAL_RUN = "mlflow_run_id"  # trial user attributes, set by the trial's job
PRUNED_AT = "pruned_at_epoch"
JOB_FAILED = "job_failed"  # set by the sweeper: the job ran and failed (diverged, bad config)
OVERRIDES = "overrides"
# A sweeper records a heartbeat of its running trials; a trial whose heartbeat stopped (a worker
# killed with SIGKILL) is marked failed by the next worker that asks for a trial.
HEARTBEAT_S, GRACE_S = 30, 120
MAX_LEGEND = 12
PLOTS = {
    "optimization_history": "plot_optimization_history",
    "intermediate_values": "plot_intermediate_values",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "slice": "plot_slice",
}


def default_storage(launch_dir: str | Path) -> str:
    """``optuna.db`` beside the default ``mlflow.db``."""
    return f"sqlite:///{Path(launch_dir).resolve() / 'optuna.db'}"


def storage_url(sweeper: DictConfig, launch_dir: str | Path) -> str:
    """The sweeper's ``storage``, else :func:`default_storage`."""
    return sweeper.storage or default_storage(launch_dir)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage that waits for a busy SQLite file instead of failing at once."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with sqlite_lock(url, "Optuna storage"):  # two workers may create its tables at once
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S)
    except UserError:
        raise
    except Exception as err:  # SQLAlchemy: bad URL, missing driver, server not answering
        raise UserError(f"Optuna storage {redacted(url)} cannot be used: {first_line(err)}") \
            from None


def redacted(url: str) -> str:
    """``url`` without a password (``postgresql://user:***@host/db``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    """The sweeper's ``pruner`` (median, halving, threshold or none); the trial's job builds the
    same one from the same config."""
    warmup = cfg.n_warmup_steps
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                                      n_warmup_steps=warmup),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup)),
        "threshold": lambda: optuna.pruners.ThresholdPruner(
            **{("lower" if cfg.direction == "maximize" else "upper"): cfg.prune_threshold},
            n_warmup_steps=warmup),
        "none": optuna.pruners.NopPruner,
    }
    if cfg.pruner not in pruners:
        raise UserError(f"hydra.sweeper.pruner={cfg.pruner!r}: must be one of "
                        f"{', '.join(pruners)}")
    if cfg.pruner == "threshold" and cfg.prune_threshold is None:
        raise UserError("hydra.sweeper.pruner=threshold needs hydra.sweeper.prune_threshold")
    return pruners[cfg.pruner]()


def make_sampler(cfg: DictConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    samplers = {
        # constant_liar: parallel workers do not all sample the point the others are trying
        "tpe": lambda: optuna.samplers.TPESampler(seed=cfg.seed, constant_liar=True,
                                                  n_startup_trials=cfg.n_startup_trials),
        "random": lambda: optuna.samplers.RandomSampler(seed=cfg.seed),
        "grid": lambda: optuna.samplers.GridSampler(space.grid(), seed=cfg.seed),
    }
    if cfg.sampler not in samplers:
        raise UserError(f"hydra.sweeper.sampler={cfg.sampler!r}: must be one of "
                        f"{', '.join(samplers)}")
    return samplers[cfg.sampler]()


def trial_value(trial: FrozenTrial, direction: str) -> float | None:
    """A trial's objective: its best epoch (the job reports the objective after each)."""
    values = list(trial.intermediate_values.values())
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial uses up the budget: finished, pruned, failed in its job, or running.
    A trial failed by an interrupt or a killed worker does not: the next invocation reruns it."""
    return (trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            or JOB_FAILED in trial.user_attrs)


def state_counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    return {"trials": len(trials), "complete": states["complete"], "pruned": states["pruned"],
            "failed": states["fail"], "running": states["running"],
            "epochs_trained": sum(len(t.intermediate_values) for t in trials)}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def config_groups() -> set[str]:
    return {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "hydra"}


def experiment_yaml(overrides: Sequence[str], title: str) -> str:
    """``overrides`` as an experiment config (``conf/experiment/<name>.yaml``,
    ``+experiment=<name>``): group choices in the defaults list, values as nested keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups, node, skipped = config_groups(), OmegaConf.create({}), []
    defaults = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        if key.startswith(("+", "~")):
            skipped.append(override.input_line)
        elif key in groups:
            defaults.append({f"override /{key}": override.value()})
        else:
            OmegaConf.update(node, key, override.value(), force_add=True)
    body = OmegaConf.create({"defaults": defaults} if defaults else {})
    body = OmegaConf.merge(body, node)
    lines = ["# @package _global_", f"# {title}"]
    lines += [f"# also give on the command line: {line}" for line in skipped]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(body)


def write_summary(study: optuna.Study, folder: Path, direction: str) -> dict[str, Any]:
    """Counts, the best trial, plots and the best configuration, into ``folder``; returns what
    a parent run records as metrics and tags."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = state_counts(study)
    (folder / "trials.md").write_text(trials_table(study, direction))
    best = best_trial(study)
    if best is not None:  # Optuna's plots need finished trials
        _save_plots(study, folder)
    summary: dict[str, Any] = {"counts": counts, "best": best}
    if best is not None:
        overrides = best.user_attrs.get(OVERRIDES, [])
        title = (f"best trial {best.number} of study {study.study_name}: objective "
                 f"{best.value:.4f}")
        (folder / "best_overrides.txt").write_text(
            "python -m mnist_bench " + " ".join(overrides) + "\n")
        (folder / "best_experiment.yaml").write_text(experiment_yaml(overrides, title))
    return summary


def _save_plots(study: optuna.Study, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    # numbers chosen with choice(...) are plotted as categories, which matplotlib remarks on
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as optuna_plots

    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib plots are "experimental"
                axes = getattr(optuna_plots, function)(study)
                figure = np.ravel(axes)[0].figure
                figure.set_size_inches(max(figure.get_size_inches()[0], 8), 5)
                for ax in figure.axes:  # one legend entry per trial: unreadable beyond a dozen
                    legend = ax.get_legend()
                    if legend is not None and len(legend.get_texts()) > MAX_LEGEND:
                        legend.remove()
                figure.tight_layout()  # warns about the colour bars of some plots
                figure.savefig(folder / f"{name}.png", dpi=110)
            plt.close(figure)
        except Exception as err:  # e.g. importances of fewer than two finished trials
            log.info("study %s: no %s plot (%s)", study.study_name, name, first_line(err))


def trials_table(study: optuna.Study, direction: str) -> str:
    """One markdown row per trial: state, objective, pruned epoch, parameters, MLflow run."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for t in trials for key in t.params})
    header = ["trial", "state", "objective", "pruned at epoch", *keys, "MLflow run"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in trials:
        value = trial_value(t, direction)
        cells = [str(t.number), t.state.name.lower(), "" if value is None else f"{value:.4f}",
                 str(t.user_attrs.get(PRUNED_AT, "")),
                 *(f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float)
                   else str(t.params.get(k, "")) for k in keys),
                 t.user_attrs.get(TRIAL_RUN, "")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def describe(study: optuna.Study, direction: str) -> str:
    counts = state_counts(study)
    line = (f"study {study.study_name}: {counts['trials']} trials, {counts['complete']} "
            f"complete, {counts['pruned']} pruned, {counts['failed']} failed, "
            f"{counts['running']} running, {counts['epochs_trained']} epochs trained")
    best = best_trial(study)
    if best is None:
        return line + "; no complete trial yet"
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best.params.items())
    return f"{line}; best: trial {best.number}, objective {best.value:.4f} ({params})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.study",
        description="List the Optuna studies of a storage, or summarise one: counts, best trial, "
                    "a table of trials, Optuna's plots and the best configuration.")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL (default: sqlite:///optuna.db in this folder)")
    parser.add_argument("--study", help="study name (default: list the studies)")
    parser.add_argument("--out", type=Path, help="folder for trials.md, plots and best config")
    args = parser.parse_args(argv)
    try:
        print(summarise(args.storage or default_storage("."), args.study, args.out))
    except UserError as err:
        print_error(str(err))
        sys.exit(1)


def summarise(url: str, name: str | None, out: Path | None) -> str:
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no Optuna storage at {url}: run a search first "
                        "(python -m mnist_bench --multirun hydra/sweeper=optuna ...) or "
                        "give --storage")
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    if name is None:
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
        return "\n".join(describe(s, s.direction.name.lower()) for s in studies) or \
            f"no studies in {redacted(url)}"
    if name not in names:
        raise UserError(f"no study {name!r} in {redacted(url)}; it has: "
                        f"{', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=storage)
    direction = study.direction.name.lower()
    if out is not None:
        write_summary(study, out, direction)
    return describe(study, direction) + (f"\nwritten to {out}" if out else "")


if __name__ == "__main__":
    main()
