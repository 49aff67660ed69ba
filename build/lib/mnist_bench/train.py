"""The training loop: plain PyTorch, cross-entropy, one tqdm bar per epoch.

The step itself (``train_step.py``) accumulates loss and accuracy on the device; the loop reads
them once per progress refresh, so the GPU is not synchronised after every step. The speed
levers (threads, cuDNN autotuning, channels_last, ``torch.compile``, CUDA graphs, autocast)
come from the ``device`` config group; ``docs/results/benchmark.md`` says what each is worth.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mnist_bench.augment import is_identity
from mnist_bench.cli import ReportedError
from mnist_bench.schedules import make_scheduler
from mnist_bench.train_step import Recipe, TrainStep, autocast, make_train_step, prepare_batch

log = logging.getLogger(__name__)
DEFAULT_NUM_THREADS = torch.get_num_threads()  # torch's choice, before any config changes it
EpochCallback = Callable[[int, dict[str, float]], None]


# Cross-entropy over 10 classes starts near ln 10 = 2.30; a healthy epoch's mean never comes
# near a hundred times that, a run whose weights blow up (e.g. lr=1e9) reaches 1e30.
RUNAWAY_LOSS = 100 * math.log(10)


class DivergedError(ReportedError):
    """The epoch's mean training loss became NaN, infinite, or over :data:`RUNAWAY_LOSS`."""

    def __init__(self, epoch: int, loss: float) -> None:
        why = "" if not math.isfinite(loss) else (
            f", over {RUNAWAY_LOSS:.0f} (100 times the chance-level loss ln 10)")
        super().__init__(f"training diverged at epoch {epoch}: loss={loss:.4g}{why}")
        self.epoch, self.loss = epoch, loss


class PrunedError(ReportedError):
    """A search's pruner stopped the trial after ``epoch`` (``search_trial.py``); its run ends
    FINISHED with the tags ``pruned`` and ``pruned_at_epoch``."""

    def __init__(self, trial: int, epoch: int, value: float) -> None:
        super().__init__(f"trial {trial} pruned after epoch {epoch} (objective {value:.4f})")
        self.epoch, self.value = epoch, value


@dataclass
class EvalResult:
    loss: float
    acc: float
    predictions: torch.Tensor
    targets: torch.Tensor


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0

    @property
    def best_val_acc(self) -> float:
        return max(row["val_acc"] for row in self.history)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; seed 0 is a seed like any other."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Set both ways: jobs of a multirun share one process, so a deterministic job must not
    # leave deterministic kernels on for the next one.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def resolve_device(kind: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
                 "cpu": True}
    kind = str(kind)
    if kind == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[kind]:
        raise RuntimeError(f"device={kind} was requested but {kind} is not available on this "
                           "machine; use device=auto or device=cpu")
    return torch.device(kind)


def apply_device_settings(device_cfg, launcher_threads: int | None = None) -> None:
    """Process-wide backend settings. ``num_threads: null`` means the threads the launcher
    gives each job (``launcher_threads``), else torch's default (all cores)."""
    torch.set_num_threads(device_cfg.num_threads or launcher_threads or DEFAULT_NUM_THREADS)
    torch.backends.cudnn.benchmark = device_cfg.cudnn_benchmark


def prepare_model(model: nn.Module, device: torch.device,
                  device_cfg) -> tuple[nn.Module, nn.Module]:
    """Move ``model`` to ``device`` (channels_last if configured) and return it together with
    the module that runs the steps: the same module, or its ``torch.compile`` wrapper. Build the
    optimizer from the first, which owns the parameters; checkpoints save its state dict."""
    model = model.to(device)
    if device_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not device_cfg.compile:
        return model, model
    return model, torch.compile(model, mode=device_cfg.compile_mode)


def train_epoch(step: TrainStep, batches: Iterable, epoch: int, desc: str, refresh_every: int,
                progress: bool = True) -> tuple[float, float]:
    """One pass of ``step`` over ``batches``; returns (mean cross-entropy, accuracy) of the epoch.

    The running loss is read (and checked for NaN) every ``refresh_every`` steps and at the end;
    ``progress=False`` hides the progress bar.
    """
    step.start_epoch()
    bar = tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
    for n, (x, y) in enumerate(bar, start=1):
        step(x, y)
        if n % refresh_every == 0:
            loss, acc = checked_running(step, epoch)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}")
    return checked_running(step, epoch)


def checked_running(step: TrainStep, epoch: int) -> tuple[float, float]:
    """The epoch's running loss and accuracy; :class:`DivergedError` if the loss ran away."""
    loss, acc = step.running()
    if not math.isfinite(loss) or loss > RUNAWAY_LOSS:
        raise DivergedError(epoch, loss)
    return loss, acc


@torch.no_grad()
def evaluate(step_model: nn.Module, batches: Iterable, device: torch.device,
             device_cfg) -> EvalResult:
    """Mean cross-entropy, accuracy, predictions and targets over ``batches``."""
    step_model.eval()
    loss_sum = torch.zeros((), device=device)
    preds, targets = [], []
    for x, y in batches:
        x, y = prepare_batch(x, y, device, device_cfg.channels_last)
        with autocast(device, device_cfg.amp):
            logits = step_model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        preds.append(logits.argmax(1))
        targets.append(y)
    predictions, targets_all = torch.cat(preds), torch.cat(targets)
    n = len(targets_all)
    acc = (predictions == targets_all).sum().item() / n
    return EvalResult(loss_sum.item() / n, acc, predictions.cpu(), targets_all.cpu())


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, splits, trainer_cfg, device_cfg,
        device: torch.device, *, step_model: nn.Module | None = None,
        result: FitResult | None = None, on_epoch_end: EpochCallback | None = None,
        augment_cfg=None) -> FitResult:
    """Train from epoch ``len(result.history) + 1`` to ``trainer_cfg.epochs``.

    ``result`` carries the history and training time of a resumed run. ``train_time_s`` is the
    wall time of the training and validation passes only: no data loading, no test pass, no
    logging.
    """
    result = result or FitResult()
    steps_per_epoch = len(splits.train)
    recipe = Recipe(
        label_smoothing=trainer_cfg.label_smoothing,
        augment=None if augment_cfg is None or is_identity(augment_cfg) else augment_cfg,
        scheduler=make_scheduler(optimizer, trainer_cfg, steps_per_epoch,
                                 len(result.history) * steps_per_epoch))
    step = make_train_step(model, step_model or model, optimizer, device, device_cfg, recipe)
    for epoch in range(len(result.history) + 1, trainer_cfg.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(
            step, splits.train, epoch, desc=f"epoch {epoch}/{trainer_cfg.epochs}",
            refresh_every=trainer_cfg.log_every_n_steps)
        val = evaluate(step.step_model, splits.val, device, device_cfg)
        elapsed = time.perf_counter() - start
        result.train_time_s += elapsed
        row = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val.loss,
               "val_acc": val.acc, "epoch_time_s": elapsed}
        if trainer_cfg.test_every_epoch:
            test = evaluate(step.step_model, splits.test, device, device_cfg)
            row |= {"test_loss_epoch": test.loss, "test_acc_epoch": test.acc}
        result.history.append(row)
        log.info("epoch %d/%d  train_loss=%.4f train_acc=%.4f val_loss=%.4f val_acc=%.4f (%.1fs)",
                 epoch, trainer_cfg.epochs, train_loss, train_acc, val.loss, val.acc, elapsed)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    return result
