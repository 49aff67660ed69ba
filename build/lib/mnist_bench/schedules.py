"""Learning-rate schedules, stepped once per batch through torch's ``LambdaLR``.

The factor is a pure function of the step, so a resumed run continues the schedule from the
optimizer's state (``initial_lr``) and the number of steps done, with nothing else to save.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ONECYCLE_WARMUP = 0.25  # as torch's OneCycleLR: a quarter of the steps warming up ...
ONECYCLE_START, ONECYCLE_END = 1 / 25, 1e-4  # ... from lr/25, then cosine down to lr/1e4


def factor_function(schedule: str, total_steps: int,
                    warmup_steps: int) -> Callable[[int], float] | None:
    """The lr multiplier at each step, or None for a constant lr."""
    if schedule == "none":
        return None
    if schedule == "onecycle":
        warmup, start, end = max(1, round(ONECYCLE_WARMUP * total_steps)), ONECYCLE_START, \
            ONECYCLE_END
    else:  # cosine, after an optional linear warm-up from zero
        warmup, start, end = warmup_steps, 0.0, 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1 - start) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, trainer_cfg, steps_per_epoch: int,
                   steps_done: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    factor = factor_function(str(trainer_cfg.schedule), trainer_cfg.epochs * steps_per_epoch,
                             round(trainer_cfg.warmup_epochs * steps_per_epoch))
    if factor is None:
        return None
    for group in optimizer.param_groups:  # a resumed optimizer has it from its first run
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=steps_done - 1)
