"""One training job of ``python -m mnist_bench``, for a config whose values are checked.

Reads top to bottom: pick the device, load the data, build model and optimizer, then train inside
an MLflow run that always ends with the right status.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_bench import (
    checkpoint,
    figure_worker,
    gc_control,
    metrics,
    runs,
    sweep_runs,
    tracking,
    tracking_store,
)
from mnist_bench.cli import UserError, handle_interrupts, raise_if_interrupted, signals_held
from mnist_bench.config import build
from mnist_bench.data import DataError, build_splits, unit_pixels
from mnist_bench.train import (
    FitResult,
    PrunedError,
    apply_device_settings,
    evaluate,
    fit,
    prepare_model,
    resolve_device,
    seed_everything,
)

log = logging.getLogger("mnist_bench")
LAUNCH_TAGS = ("hydra_overrides", "hydra_output_dir", "git_commit")  # how a run was started


def find_checkpoint(resume: str) -> Path:
    """``resume`` is a checkpoint path or the id of an MLflow run that recorded one."""
    if Path(resume).is_file():
        return Path(resume)
    try:
        path = mlflow.get_run(resume).data.tags.get("checkpoint")
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"resume={resume!r}: not a checkpoint file nor a known MLflow run id "
                        f"({err.message.splitlines()[0]})") from None
    if not path or not Path(path).is_file():
        raise UserError(f"resume={resume!r}: the run has no checkpoint on this machine ({path})")
    return Path(path)


def load_resume_state(cfg: DictConfig, held: contextlib.ExitStack,
                      output_dir: Path) -> dict[str, Any]:
    """The checkpoint that ``cfg.resume`` names, once its run is known to resume with ``cfg``.

    Its folder is held (in ``held``) before the run's writer is checked: of two resumes started
    at once, both could otherwise find the writer gone, and both would write the run.
    """
    path = find_checkpoint(cfg.resume)
    try:
        if path.parent.resolve() != output_dir.resolve():  # this job's folder: held already
            held.enter_context(checkpoint.folder_held(path.parent))
        state = checkpoint.load_checkpoint(path)
    except checkpoint.FolderHeld:
        raise UserError(f"resume={cfg.resume!r}: another process is resuming this run or "
                        f"writing {path}; wait for it to end or stop it") from None
    except checkpoint.CheckpointError as err:
        raise UserError(f"resume={cfg.resume!r}: {err}") from None
    run_id = state["mlflow_run_id"]
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"resume={cfg.resume!r}: the checkpoint's MLflow run {run_id} is not in "
                        f"the tracking store {mlflow.get_tracking_uri()}") from None
    if run.info.status == "RUNNING" and runs.writer_state(run) == runs.ALIVE:
        tags = run.data.tags
        raise UserError(f"resume={cfg.resume!r}: MLflow run {run_id} is being written by "
                        f"process {tags['pid']} on {tags['host']}; wait for it to end or stop it")
    problems = tracking.resume_problems(cfg, run)
    if problems:
        raise UserError(f"resume={cfg.resume!r} cannot continue MLflow run {run_id}:\n  "
                        + "\n  ".join(problems))
    return state


def launcher_jobs(launcher: DictConfig) -> int:
    """Jobs the launcher runs at once: joblib's ``n_jobs`` as joblib reads it (-1: one per
    core, -2: all cores but one ...); 1 for launchers without it."""
    n_jobs = launcher.get("n_jobs") or 1
    return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)


def launcher_threads() -> int | None:
    """CPU threads per job that the launcher implies: submitit's ``cpus_per_task``, or the
    cores shared among joblib's ``n_jobs`` (negative as joblib reads it: -1, one job per core);
    None for jobs run one at a time."""
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "submitit" in target:
        return launcher.get("cpus_per_task")
    if "joblib" not in target:
        return None
    return max(1, (os.cpu_count() or 1) // launcher_jobs(launcher))


def job_context() -> tuple[Path, Path, dict[str, str]]:
    """Launch folder, this job's output folder, and the Hydra tags of the run."""
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith(("resume=", "tracking.uri="))]
    tags = {"hydra_overrides": " ".join(overrides) or "(defaults)",
            "hydra_output_dir": hc.runtime.output_dir}
    if hc.mode == RunMode.MULTIRUN:
        tags |= {"sweep_id": sweep_runs.sweep_id_of(hc.sweep.dir),
                 "sweep_dir": str(Path(hc.sweep.dir).resolve())}
    return Path(hc.runtime.cwd), Path(hc.runtime.output_dir), tags


def logged_model_name(cfg: DictConfig) -> str:
    """``lenet-lr0_01-s3``: the MLflow UI lists logged models by name (which may not hold
    ``.``)."""
    return f"{cfg.model.name}-lr{cfg.optimizer.lr:g}-s{cfg.trainer.seed}".replace(".", "_")


def run_name(cfg: DictConfig) -> str:
    """What differs and matters first (``lenet lr=0.01 seed=3``, after ``trial 7:`` in a
    search), then the other overrides."""
    leading = ("model=", "optimizer.lr=", "trainer.seed=")
    excluded = tuple(f"{key}=" for key in
                     HydraConfig.get().job.config.override_dirname.exclude_keys)
    others = [o for o in HydraConfig.get().overrides.task
              if not o.startswith(leading + excluded)]
    trial = [] if cfg.search.trial is None else [f"trial {cfg.search.trial}:"]
    return " ".join([*trial, f"{cfg.model.name} lr={cfg.optimizer.lr:g} seed={cfg.trainer.seed}",
                     *others])


def train_and_track(cfg: DictConfig) -> float:
    """Train and track one job; returns its best validation accuracy (a sweeper's objective).

    The job holds its output folder, and a resumed run's earlier folder, until it ends.
    """
    with contextlib.ExitStack() as held:
        held.enter_context(checkpoint.folder_held(Path(HydraConfig.get().runtime.output_dir)))
        objective = track_training(cfg, held)
    raise_if_interrupted()  # one held while the run ended, or swallowed since its last epoch
    return objective


def track_training(cfg: DictConfig, held: contextlib.ExitStack) -> float:
    launch_dir, output_dir, tags = job_context()
    figures = held.enter_context(figure_worker.started())  # imports matplotlib meanwhile
    try:
        device = resolve_device(cfg.device.type)
    except RuntimeError as err:
        raise UserError(str(err)) from None
    apply_device_settings(cfg.device, launcher_threads())
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)

    tracking_store.open_configured_store(cfg.tracking, launch_dir)
    search = open_search_trial(cfg)
    state = load_resume_state(cfg, held, output_dir) if cfg.resume else None

    try:
        splits = build_splits(cfg.data, cfg.trainer.batch_size, cfg.trainer.eval_batch_size,
                              device, cfg.trainer.seed)
    except DataError as err:
        raise UserError(str(err)) from None
    model, step_model = prepare_model(build(cfg.model, "model"), device, cfg.device)
    optimizer = build(cfg.optimizer, "optimizer")(model.parameters())
    result = FitResult()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_rng_state(state["rng"], splits.generator)
        result = FitResult(history=state["history"], train_time_s=state["train_time_s"])

    model_name, opt_name = cfg.model.name, cfg.optimizer.name
    ckpt_path = output_dir / checkpoint.CHECKPOINT_NAME
    tags |= {"model": model_name, "optimizer": opt_name, "device": str(device),
             "torch_threads": str(torch.get_num_threads()),
             "git_commit": tracking.git_commit(launch_dir), "checkpoint": str(ckpt_path),
             **runs.writer_tags()}
    if cfg.tracking.sweep_id:
        tags["sweep_id"] = cfg.tracking.sweep_id
    if cfg.tracking.label:
        tags["label"] = cfg.tracking.label
    parent = sweep_runs.parent_of(tags["sweep_id"]) if "sweep_id" in tags else None
    if parent:
        tags["mlflow.parentRunId"] = parent
    if search is not None:  # a trial's run is a child of its study's run
        tags |= search.tags()
    if state is not None:  # this job's folder holds the checkpoint that the run tag names
        checkpoint.save_checkpoint(ckpt_path, **state)
        tags["resumed_from_epoch"] = str(state["epoch"])
        # the run keeps the record of how it was started; this resume's is tagged beside it
        tags |= {f"resume_{key}": tags.pop(key) for key in LAUNCH_TAGS}
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s (%s parameters) on %s, %d training images", model_name, f"{n_params:,}",
             device, splits.n_train)

    handle_interrupts()
    raise_if_interrupted()  # one that came while the data loaded, if library code swallowed it
    # Ctrl-C and SIGTERM wait while MLflow writes (signals_held): an interrupt inside a SQLite
    # transaction leaves the store locked, and the run could then not be ended.
    name = cfg.tracking.run_name or run_name(cfg)
    run_id = state["mlflow_run_id"] if state else None
    try:
        with tracking.mlflow_run(run_id, name, tags) as run_id:
            with signals_held():
                if state is None:
                    tracking.log_config(cfg, output_dir / ".hydra")
                    tracking.log_datasets(splits.records, cfg.data.root)
                else:
                    tracking.log_missing_epochs(run_id, state["history"])
                if search is not None:
                    search.started(run_id)

            def end_of_epoch(epoch: int, row: dict[str, float]) -> None:
                # Checkpoint first: MLflow never holds an epoch that no checkpoint holds, so a
                # resumed run never logs an epoch twice (log_missing_epochs fills the other gap).
                with signals_held():
                    checkpoint.save_checkpoint(
                        ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        epoch=epoch, rng=checkpoint.rng_state(splits.generator),
                        history=result.history, train_time_s=result.train_time_s,
                        best_val_acc=result.best_val_acc, mlflow_run_id=run_id)
                    tracking.log_epoch(epoch, row)
                    if search is not None:  # may stop the trial here (PrunedError)
                        search.report(epoch, row)
                raise_if_interrupted()  # a signal whose KeyboardInterrupt was swallowed

            gc_control.resume_collection()
            result = fit(model, optimizer, splits, cfg.trainer, cfg.device, device,
                         step_model=step_model, result=result, on_epoch_end=end_of_epoch,
                         augment_cfg=cfg.augment)
            test = evaluate(step_model, splits.test, device, cfg.device)
            gc_control.pause_collection()  # logging exports the model
            targets, predictions = test.targets.numpy(), test.predictions.numpy()
            figures.draw(result.history, metrics.confusion_matrix(targets, predictions),
                         f"{model_name}, {opt_name} lr={cfg.optimizer.lr:g}",
                         output_dir / "figures")
            with signals_held():
                mlflow.log_metrics({"test_acc": test.acc, "test_loss": test.loss,
                                    "best_val_acc": result.best_val_acc,
                                    "train_time_s": result.train_time_s, "n_params": n_params})
                if cfg.tracking.log_model:  # while the helper draws the figures
                    images = next(iter(splits.test))[0][:4]
                    tracking.log_model(model, unit_pixels(images, cfg.data.normalize),
                                       cfg.data.normalize, logged_model_name(cfg))
            drawn = figures.finished()  # not held: Ctrl-C must not wait for a stuck helper
            with signals_held():
                tracking.log_evaluation(targets, predictions, drawn)
    except PrunedError as err:
        print(f"{model_name} lr={cfg.optimizer.lr:g}: {err} run_id={run_id}", flush=True)
        return err.value

    last = result.history[-1]
    print(f"{model_name} lr={cfg.optimizer.lr:g}: train_acc={last['train_acc']:.4f} "
          f"val_acc={last['val_acc']:.4f} test_acc={test.acc:.4f} "
          f"train_time_s={result.train_time_s:.1f} run_id={run_id}", flush=True)
    return result.best_val_acc


def open_search_trial(cfg: DictConfig):
    """The Optuna trial this job runs for ``hydra/sweeper=optuna``, else None."""
    if cfg.search.trial is None:
        return None
    from mnist_bench.search_trial import open_trial  # Optuna: imported for searches only

    return open_trial(cfg.search, cfg.trainer.epochs)
