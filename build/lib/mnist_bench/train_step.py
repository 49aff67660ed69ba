"""One optimisation step, eager or replayed as a CUDA graph.

A step is forward, cross-entropy, backward, the optimizer update and the epoch's running sums of
loss and correct predictions, which stay on the device and are read once per progress refresh.
On a GPU these small networks are bound by kernel launches, not arithmetic: a ResNet-18 step is
a few hundred tiny kernels. :class:`CUDAGraphTrainStep` captures the whole step once and then
launches it as one graph per batch (PyTorch's "whole-network capture", ``torch.cuda.graphs``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mnist_bench.augment import random_affine

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """What a step does beyond plain cross-entropy on the batch as loaded: label smoothing,
    random affine augmentation (``augment`` config, None for none) and a per-step lr schedule."""

    label_smoothing: float = 0.0
    augment: Any = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


def autocast(device: torch.device, amp: str | None,
             cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast, or nothing for fp32. A graph capture needs ``cache_enabled=False``."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def grad_scaler(device: torch.device, amp: str | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast, whose small gradients would underflow without it; a
    disabled scaler (a plain ``backward`` and ``step``) otherwise. bf16 has fp32's range."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def prepare_batch(x: torch.Tensor, y: torch.Tensor, device: torch.device,
                  channels_last: bool, augment=None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if augment is not None:
        x = random_affine(x, augment)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


class TrainStep:
    """Trains ``model`` on one batch per call and sums the epoch's loss and hits on the device.

    ``step_model`` runs the forward pass: ``model`` itself or its ``torch.compile`` wrapper. The
    fp16 loss scaler lives here so that its scale carries over from one epoch to the next.
    """

    autocast_cache = True
    capturable = False  # Adam's graph-safe mode, slower outside a graph

    def __init__(self, model: nn.Module, step_model: nn.Module,
                 optimizer: torch.optim.Optimizer, device: torch.device, device_cfg,
                 recipe: Recipe | None = None) -> None:
        self.model, self.step_model, self.optimizer = model, step_model, optimizer
        self.recipe = recipe or Recipe()
        for group in optimizer.param_groups:  # Adam/AdamW; also resets a GPU checkpoint's flag
            if "capturable" in group:
                group["capturable"] = self.capturable
        self.device, self.amp, self.channels_last = device, device_cfg.amp, device_cfg.channels_last
        self.scaler = grad_scaler(device, device_cfg.amp)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def start_epoch(self) -> None:
        self.model.train()
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = prepare_batch(x, y, self.device, self.channels_last, self.recipe.augment)
        self.run(x, y)
        if self.recipe.scheduler is not None:
            self.recipe.scheduler.step()
        self.seen += len(y)

    def run(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step's arithmetic; no host synchronisation, so that it can be captured."""
        with autocast(self.device, self.amp, self.autocast_cache):
            logits = self.step_model(x)
            loss = nn.functional.cross_entropy(logits, y,
                                               label_smoothing=self.recipe.label_smoothing)
            aux = getattr(self.model, "auxiliary_loss", None)
            objective = loss + aux(y) if aux is not None else loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()

    def running(self) -> tuple[float, float]:
        """Mean loss and accuracy of the epoch so far (one host synchronisation)."""
        return self.loss_sum.item() / self.seen, self.correct.item() / self.seen


class CUDAGraphTrainStep(TrainStep):
    """:class:`TrainStep` replayed as one CUDA graph per batch.

    The first ``warmup_steps`` batches of the first batch's shape train eagerly on a side
    stream, as capture requires: they let cuDNN pick its kernels and the optimizer create its
    state. The next batch of that shape is captured, and every later one replays the graph after
    copying itself into the graph's input tensors. A batch of another shape (an epoch's last,
    partial batch) trains eagerly. Every batch trains exactly once, so the result is that of
    eager training.
    """

    autocast_cache = False  # autocast's weight cache cannot live across graph replays
    capturable = True  # Adam keeps its step count on the GPU and reads no host value
    warmup_steps = 3

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param, state in self.optimizer.state.items():
            # A resumed checkpoint of an eager, unfused Adam keeps its step count on the host,
            # which capturable Adam refuses.
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(param.device, torch.float32)
        self.side_stream = torch.cuda.Stream(self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x = self.static_y = None
        self.graph_shape: torch.Size | None = None  # the first batch's shape
        self.warm_steps = self.eager_steps = 0

    def run(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.graph_shape = self.graph_shape or x.shape
        if x.shape == self.graph_shape and self.warm_steps >= self.warmup_steps:
            if self.graph is None:
                self._capture(x, y)
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            return
        if x.shape == self.graph_shape:
            self.warm_steps += 1
        self.eager_steps += 1
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            super().run(x, y)
        current.wait_stream(self.side_stream)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = torch.empty_like(x), torch.empty_like(y)
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates its own gradients
        eager_run = super().run
        self.graph = self._record(lambda: eager_run(self.static_x, self.static_y))
        log.debug("captured the training step as a CUDA graph for batches of shape %s",
                  tuple(x.shape))

    @staticmethod
    def _record(step: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """A graph whose ``replay()`` runs ``step``'s kernels again; capturing runs none of them."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph


def uses_cuda_graphs(device: torch.device, device_cfg, recipe: Recipe | None = None) -> bool:
    """Whether ``device.cuda_graphs`` applies: on CUDA, unless another setting rules it out."""
    if not device_cfg.cuda_graphs or device.type != "cuda":
        return False
    if recipe is not None and recipe.scheduler is not None:
        log.info("device.cuda_graphs ignored: a graph would keep the first step's learning rate, "
                 "and trainer.schedule changes it every step")
        return False
    if device_cfg.compile:
        log.info("device.cuda_graphs ignored: device.compile=true compiles the model instead "
                 "(compile_mode=reduce-overhead gives it CUDA graphs of its own)")
        return False
    if device_cfg.amp == "fp16":
        log.info("device.cuda_graphs ignored: fp16 loss scaling checks for overflow on the host "
                 "after every step; use device.amp=bf16 to keep the graphs")
        return False
    return True


def make_train_step(model: nn.Module, step_model: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, device_cfg, recipe: Recipe | None = None) -> TrainStep:
    kind = CUDAGraphTrainStep if uses_cuda_graphs(device, device_cfg, recipe) else TrainStep
    return kind(model, step_model, optimizer, device, device_cfg, recipe)
