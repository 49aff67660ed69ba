"""The job side of ``hydra/sweeper=optuna``: a trial's job reports its objective to the study
after each epoch and stops early when the study's pruner says so.

The sweeper gives each job ``search.study`` and ``search.trial``; the storage and the pruner come
from the sweeper's own config, which every job's Hydra config holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_bench import study as studies
from mnist_bench.cli import UserError, first_line
from mnist_bench.sweep_runs import OPTUNA_SWEEPER
from mnist_bench.train import PrunedError


@dataclass
class SearchTrial:
    trial: optuna.Trial
    objective: str  # the key of the epoch's metrics that the study optimises
    parent_run_id: str | None
    epochs: int  # a trial past its last epoch is complete: pruning it then would save nothing

    def tags(self) -> dict[str, str]:
        tags = {"optuna_study": self.trial.study.study_name,
                "optuna_trial": str(self.trial.number)}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        return tags

    def started(self, run_id: str) -> None:
        self.trial.set_user_attr(studies.TRIAL_RUN, run_id)

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the epoch's objective; raise :class:`PrunedError` if the pruner stops here."""
        value = metrics[self.objective]
        self.trial.report(value, epoch)
        if epoch < self.epochs and self.trial.should_prune():
            self.trial.set_user_attr(studies.PRUNED_AT, epoch)
            raise PrunedError(self.trial.number, epoch, value)


def open_trial(search: DictConfig, epochs: int) -> SearchTrial | None:
    """The Optuna trial this job runs (for ``epochs`` epochs), or None outside a search."""
    if search.trial is None:
        return None
    hc = HydraConfig.get()
    sweeper = hc.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER or search.study is None:
        raise UserError("search.study and search.trial are set by hydra/sweeper=optuna for each "
                        "trial; do not set them by hand")
    url = studies.storage_url(sweeper, hc.runtime.cwd)
    storage = studies.open_storage(url)
    try:
        study = optuna.load_study(study_name=search.study, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(),
                                  pruner=studies.make_pruner(sweeper))
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(search.study), search.trial)
    except KeyError as err:
        raise UserError(f"search.study={search.study!r} search.trial={search.trial}: no such "
                        f"trial in {studies.redacted(url)} ({first_line(err)})") from None
    return SearchTrial(optuna.trial.Trial(study, trial_id), sweeper.objective,
                       study.user_attrs.get(studies.PARENT_RUN), epochs)
