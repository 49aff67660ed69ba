"""``hydra/sweeper=optuna``: the search loop that the Hydra sweeper plugin runs.

Each round asks the study for as many trials as the launcher runs at once, launches one job per
trial through Hydra's launcher (so ``hydra/launcher=joblib`` or submitit work as for a grid),
and tells the study how each ended: complete (its best epoch is the value), pruned (its job
stopped early, see ``search_trial.py``) or failed (a diverged or invalid job, which never stops
the search). The study lives in Optuna's RDB storage, so a second invocation of the same command,
now or at once on another machine, continues it. The study is one parent MLflow run; each trial's
run is its child.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial, TrialState

from mnist_bench import runs, tracking_store
from mnist_bench import study as studies
from mnist_bench.cli import (
    JobFailed,
    UserError,
    first_line,
    interrupted,
    raise_if_interrupted,
    signals_held,
)
from mnist_bench.job import launcher_jobs
from mnist_bench.search_space import SearchSpace, parse_search_space

log = logging.getLogger("mnist_bench")
OBJECTIVES = ("val_acc", "val_loss", "train_acc", "train_loss")
# Trials whose jobs all refuse the same way (no data, a bad fixed override) cannot succeed later.
SAME_ERROR_STOP = 3
PARENT_WAIT_S = 60
NOT_THE_STUDY = ("tracking.", "device.", "data.root=", "data.num_workers=", "resume=")


@dataclass(frozen=True)
class StudyRun:
    client: MlflowClient
    run_id: str


def check_settings(cfg: DictConfig) -> None:
    if cfg.direction not in ("maximize", "minimize"):
        raise UserError(f"hydra.sweeper.direction={cfg.direction!r}: maximize or minimize")
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"hydra.sweeper.objective={cfg.objective!r}: one of "
                        f"{', '.join(OBJECTIVES)}")
    for key in ("n_trials", "n_jobs"):
        if cfg[key] is not None and cfg[key] < 1:
            raise UserError(f"hydra.sweeper.{key}={cfg[key]}: must be >= 1")


def default_study_name(experiment: str, space: SearchSpace) -> str:
    """The same command names the same study, so that running it again continues it, also with
    another store, device or data folder (which do not change what a trial trains)."""
    fixed = [o for o in space.fixed if not o.lstrip("+~").startswith(NOT_THE_STUDY)]
    spec = sorted(fixed) + sorted(f"{k}:{d!r}" for k, d in space.distributions.items())
    return f"{experiment}-{hashlib.sha1('|'.join(spec).encode()).hexdigest()[:8]}"


def parallel_trials(cfg: DictConfig, launcher_cfg: DictConfig) -> int:
    """``n_jobs``, else as many trials per round as the launcher runs at once."""
    return cfg.n_jobs if cfg.n_jobs is not None else launcher_jobs(launcher_cfg)


def open_study(cfg: DictConfig, name: str, storage: optuna.storages.BaseStorage,
               space: SearchSpace) -> tuple[optuna.Study, bool]:
    """The study ``name``: created, or loaded if it exists (``load_if_exists``, told apart)."""
    kwargs = {"study_name": name, "storage": storage, "sampler": studies.make_sampler(cfg, space),
              "pruner": studies.make_pruner(cfg)}
    try:
        return optuna.create_study(direction=cfg.direction, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
    if study.direction.name.lower() != cfg.direction:
        raise UserError(f"study {name} exists with direction {study.direction.name.lower()}; "
                        f"give another hydra.sweeper.study_name")
    return study, False


def study_run(study: optuna.Study, config: DictConfig, url: str,
              joined: str | None) -> StudyRun:
    """The study's parent MLflow run: created by the worker that created the study, else the
    run ``joined`` that the first worker created, reopened."""
    uri = tracking_store.open_configured_store(config.tracking, os.getcwd())
    client = MlflowClient(uri)
    if joined is None:
        experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
        run = client.create_run(experiment.experiment_id, run_name=f"study {study.study_name}",
                                tags={"run_type": studies.STUDY,
                                      "optuna_study": study.study_name,
                                      "optuna_storage": studies.redacted(url)})
        study.set_user_attr(studies.PARENT_RUN, run.info.run_id)
        run_id = run.info.run_id
    else:
        run_id = joined
        try:
            client.update_run(run_id, status="RUNNING")
        except mlflow.exceptions.MlflowException:
            raise UserError(f"study {study.study_name}'s MLflow run {run_id} is not in the "
                            f"tracking store {uri}: give the tracking.uri its first worker used, "
                            "or another hydra.sweeper.study_name") from None
    for key, value in runs.writer_tags().items():
        client.set_tag(run_id, key, value)
    return StudyRun(client, run_id)


def _wait_for_parent(name: str, storage: optuna.storages.BaseStorage) -> str:
    """The parent run id, which the worker that created the study records a moment later."""
    for _ in range(PARENT_WAIT_S):
        run_id = optuna.load_study(study_name=name, storage=storage).user_attrs.get(
            studies.PARENT_RUN)
        if run_id:
            return run_id
        time.sleep(1)
    raise UserError(f"study {name} has no MLflow parent run after "
                    f"{PARENT_WAIT_S} s; the worker that created it may have died")


def trials_left(study: optuna.Study, n_trials: int) -> int:
    optuna.storages.fail_stale_trials(study)
    return n_trials - sum(studies.counted(t) for t in study.get_trials(deepcopy=False))


@contextlib.contextmanager
def heartbeats(storage: optuna.storages.RDBStorage, trials: Sequence[Trial]) -> Iterator[None]:
    """Record the trials' heartbeats while their jobs run, so that other workers can tell a
    running trial from one whose worker was killed."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            for trial in trials:
                with contextlib.suppress(Exception):  # a missed beat is only a late one
                    storage.record_heartbeat(trial._trial_id)  # the storage API takes the id
            stop.wait(studies.HEARTBEAT_S)

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finish(study: optuna.Study, trial: Trial, value: float | None = None,
           state: TrialState | None = None) -> None:
    """``study.tell``. Optuna's grid sampler asks the study to stop once the grid is done, which
    only ``study.optimize`` allows; the trial is stored before that request, so it is ignored."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError:
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise


def frozen_trial(study: optuna.Study, trial: Trial) -> optuna.trial.FrozenTrial:
    """The trial as stored now, with what its job recorded (a study numbers trials 0, 1, ...)."""
    return study.get_trials(deepcopy=False)[trial.number]


def tell(study: optuna.Study, trial: Trial, result: JobReturn, direction: str) -> str:
    """Record how the trial's job ended; returns a line for the log."""
    frozen = frozen_trial(study, trial)
    if result.status != JobStatus.COMPLETED:
        failure = result._return_value
        error = failure.reason if isinstance(failure, JobFailed) else first_line(failure)
        trial.set_user_attr(studies.JOB_FAILED, error)
        finish(study, trial, state=TrialState.FAIL)
        return f"failed ({error})"
    value = studies.trial_value(frozen, direction)
    if studies.PRUNED_AT in frozen.user_attrs:
        finish(study, trial, state=TrialState.PRUNED)
        return f"pruned after epoch {frozen.user_attrs[studies.PRUNED_AT]} ({value:.4f})"
    if value is None or math.isnan(value):
        trial.set_user_attr(studies.JOB_FAILED, "the job reported no objective")
        finish(study, trial, state=TrialState.FAIL)
        return "failed (no objective reported)"
    finish(study, trial, value)
    return f"complete, objective {value:.4f}"


def fail_unfinished(study: optuna.Study, trials: Sequence[Trial]) -> None:
    """Trials of an interrupted round: failed, without using up the budget (``counted``)."""
    for trial in trials:
        if frozen_trial(study, trial).state == TrialState.RUNNING:
            finish(study, trial, state=TrialState.FAIL)


def run_search(cfg: DictConfig, config: DictConfig, launcher, arguments: list[str],
               validate) -> None:
    """The sweeper's ``sweep``: ``cfg`` is its config, ``config`` the multirun's (with its
    ``hydra`` node), ``validate`` composes a batch of jobs before launch."""
    check_settings(cfg)
    space = parse_search_space([f"{k}={v}" for k, v in (cfg.params or {}).items()] + arguments)
    n_trials = cfg.n_trials
    if cfg.sampler == "grid":
        n_trials = min(n_trials, math.prod(len(v) for v in space.grid().values()))
    url = studies.storage_url(cfg, os.getcwd())
    storage = studies.open_storage(url)
    name = cfg.study_name or default_study_name(config.tracking.experiment, space)
    study, created = open_study(cfg, name, storage, space)
    sweep_dir = Path(config.hydra.sweep.dir)
    parent, status = None, "FAILED"
    try:
        joined = None if created else _wait_for_parent(name, storage)  # Ctrl-C stops it at once
        with signals_held():  # a signal raises only once the parent exists: finally ends it
            parent = study_run(study, config, url, joined)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        log.info("study %s in %s (MLflow parent run %s): %s", name, studies.redacted(url),
                 parent.run_id, "created" if created else "continued")
        run_rounds(study, storage, space, launcher, validate, n_trials,
                   parallel_trials(cfg, config.hydra.launcher), cfg.direction)
        raise_if_interrupted()  # one that came during the last round's bookkeeping
        status = "FINISHED"
    except BaseException as err:
        status = "KILLED" if interrupted() or isinstance(err, KeyboardInterrupt) else "FAILED"
        if parent is None and created:  # a study without its parent run would make the next
            optuna.delete_study(study_name=name, storage=storage)  # worker wait for it
        raise
    finally:
        if parent is not None:
            with signals_held():
                end_study_run(study, parent, cfg.direction, status, sweep_dir)


def run_rounds(study: optuna.Study, storage, space: SearchSpace, launcher, validate,
               n_trials: int, per_round: int, direction: str) -> None:
    job_idx, user_errors = 0, []
    while (left := trials_left(study, n_trials)) > 0:
        raise_if_interrupted()  # joblib's jobs check in their own processes, not here
        trials = [study.ask(space.distributions) for _ in range(min(per_round, left))]
        batch = []
        for trial in trials:
            overrides = space.trial_overrides(trial.params)
            trial.set_user_attr(studies.OVERRIDES, overrides)
            batch.append([*overrides, f"search.study={study.study_name}",
                          f"search.trial={trial.number}"])
        try:
            validate(batch)
            with heartbeats(storage, trials):
                results = launcher.launch(batch, initial_job_idx=job_idx)
        except BaseException:
            fail_unfinished(study, trials)
            raise
        job_idx += len(batch)
        for trial, result in zip(trials, results, strict=True):
            log.info("trial %d: %s", trial.number, tell(study, trial, result, direction))
            error = result._return_value if result.status == JobStatus.FAILED else None
            refused = isinstance(error, JobFailed) and error.user_error
            user_errors = [*user_errors, error.reason] if refused else []
        if len(user_errors) >= SAME_ERROR_STOP and len(set(user_errors)) == 1:
            raise UserError(f"the search stops: its last {len(user_errors)} trials were refused "
                            f"alike ({user_errors[0]})")


def end_study_run(study: optuna.Study, parent: StudyRun, direction: str, status: str,
                  sweep_dir: Path) -> None:
    """Record counts, the best trial, plots and best configuration in the parent run and the
    sweep folder; end the parent unless another worker still runs trials. A failure here is one
    logged line: every trial's run has ended already."""
    try:
        _end_study_run(study, parent, direction, status, sweep_dir)
    except Exception as err:
        log.error("study %s: its parent run %s could not be updated (%s)", study.study_name,
                  parent.run_id, first_line(err))


def _end_study_run(study: optuna.Study, parent: StudyRun, direction: str, status: str,
                   sweep_dir: Path) -> None:
    try:
        record_summary(study, parent, direction, sweep_dir)
    except Exception as err:  # the summary is a bonus; the parent must still end
        log.warning("study %s: no summary in its parent run %s (%s)", study.study_name,
                    parent.run_id, first_line(err))
        parent.client.set_tag(parent.run_id, "summary_error", first_line(err))
    if studies.state_counts(study)["running"] and status == "FINISHED":
        return  # another worker's trials: that worker ends the parent
    parent.client.set_terminated(parent.run_id, status)


def record_summary(study: optuna.Study, parent: StudyRun, direction: str,
                   sweep_dir: Path) -> None:
    client, run_id = parent.client, parent.run_id
    summary = studies.write_summary(study, sweep_dir / "study", direction)
    client.log_artifacts(run_id, str(sweep_dir / "study"), "study")
    counts, best = summary["counts"], summary["best"]
    for key, value in counts.items():
        client.log_metric(run_id, key, value)
    if best is not None:
        client.log_metric(run_id, "best_value", best.value)
        client.set_tag(run_id, "best_trial", str(best.number))
        for key, value in best.params.items():  # tags, not params: a later worker updates them
            client.set_tag(run_id, f"best.{key}", str(value))
    where = sweep_dir / "study" / ("best_overrides.txt" if best else "")
    log.info("%s; summary: %s", studies.describe(study, direction), where)
