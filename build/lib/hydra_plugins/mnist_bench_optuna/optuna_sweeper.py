"""``hydra/sweeper=optuna``: a Hydra sweeper on the current Optuna, with pruning.

Hydra only builds sweepers that live in the ``hydra_plugins`` package; this module registers the
config and adapts Hydra's sweeper interface. The search itself is ``mnist_bench/search.py``.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_bench_optuna.optuna_sweeper.OptunaSweeper"
    n_trials: int = 20          # the study's total: a second invocation runs what is left
    n_jobs: int | None = None   # trials per round; null: as many as the launcher runs at once
    direction: str = "maximize"
    objective: str = "val_acc"  # reported after every epoch; a trial's value is its best epoch
    sampler: str = "tpe"        # tpe, random or grid
    seed: int | None = None     # the sampler's seed
    pruner: str = "median"      # median, halving, threshold or none
    n_startup_trials: int = 5   # trials before the median pruner prunes and TPE models
    n_warmup_steps: int = 1     # epochs a trial always runs before it can be pruned
    prune_threshold: float | None = None  # pruner=threshold: prune below it (above: minimize)
    study_name: str | None = None  # null: derived from the search space and fixed overrides
    storage: str | None = None  # null: sqlite:///<launch folder>/optuna.db; any SQLAlchemy URL
    params: dict[str, str] = field(default_factory=dict)  # the search space, as overrides


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="mnist_bench")


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = OmegaConf.structured(OptunaSweeperConf(**settings))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from mnist_bench.cli import UserError
        from mnist_bench.search import run_search  # optuna and MLflow: imported for searches

        try:
            run_search(self.settings, self.config, self.launcher, arguments,
                       self.validate_batch_is_legal)
        except UserError as err:  # Hydra prints a compact exception as its one line
            raise CompactHydraException(str(err)) from None
