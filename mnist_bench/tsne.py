"""``python -m mnist_bench.tsne``: a t-SNE map of MNIST pixels or of a trained model's features.

Hydra composes and type-checks the config; :func:`run_tsne` checks its values and only then
imports torch and MLflow (``tsne_job.py``), so that ``--help`` and a config mistake answer in
about a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from mnist_bench.cli import CONF_DIR, UserError, exit_interrupted, fail_job, run_command
from mnist_bench.config import DataConf, choice, register_configs
from mnist_bench.embedding import TSNEParams

log = logging.getLogger("mnist_bench.tsne")


Subset = choice("Subset", "train", "test", module=__name__)
Source = choice("Source", "pixels", "features", module=__name__)
MIN_SAMPLES = 50


@dataclass
class TSNETrackingConf:
    uri: str | None = None
    experiment: str = MISSING
    run_name: str | None = None


@dataclass
class TSNEConfig:
    """Types of ``conf/tsne.yaml``, which holds the values: a wrong type fails while composing."""

    data: DataConf = field(default_factory=DataConf)
    model: Any = None
    n_samples: int = MISSING
    subset: Subset = MISSING
    seed: int = MISSING
    source: Source = MISSING
    model_uri: str | None = None
    batch_size: int = MISSING
    pca_dims: int = MISSING
    tsne: TSNEParams = field(default_factory=TSNEParams)
    tracking: TSNETrackingConf = field(default_factory=TSNETrackingConf)


register_configs()
ConfigStore.instance().store(name="tsne_schema", node=TSNEConfig)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every value problem of ``cfg``, one line each; empty if valid."""
    p = cfg.tsne
    checks: list[tuple[str, Any, bool, str]] = [
        ("n_samples", cfg.n_samples, cfg.n_samples >= MIN_SAMPLES, f"an integer >= {MIN_SAMPLES}"),
        ("model_uri", cfg.model_uri, cfg.source != "features" or bool(cfg.model_uri),
         "set with source=features: runs:/<run id>/<model name> (the run's model_uri tag), "
         "or a checkpoint path and model=<name>"),
        ("source", cfg.source, not cfg.model_uri or cfg.source == "features",
         "features when model_uri is set (or drop model_uri)"),
        ("batch_size", cfg.batch_size, cfg.batch_size >= 1, "an integer >= 1"),
        ("pca_dims", cfg.pca_dims, cfg.pca_dims >= 2, "an integer >= 2"),
        ("tsne.perplexity", p.perplexity, 0 < 3 * p.perplexity < cfg.n_samples,
         f"> 0 and below n_samples / 3 = {cfg.n_samples / 3:g}"),
        ("tsne.early_exaggeration_iter", p.early_exaggeration_iter, p.early_exaggeration_iter >= 0,
         "an integer >= 0"),
        ("tsne.n_iter", p.n_iter, p.n_iter >= 1, "an integer >= 1"),
        ("tsne.n_jobs", p.n_jobs, p.n_jobs is None or p.n_jobs >= 1, "null or an integer >= 1"),
    ]
    return [f"{key}={value!r}: must be {allowed}" for key, value, ok, allowed in checks if not ok]


def run_tsne(cfg: DictConfig) -> float:
    """Check the config's values, then embed and track (:mod:`mnist_bench.tsne_job`)."""
    problems = config_problems(cfg)
    if problems:
        raise UserError("invalid configuration:\n  " + "\n  ".join(problems))
    from mnist_bench.tsne_job import embed_and_track  # torch and MLflow: seconds to import

    return embed_and_track(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tsne")
def main(cfg: DictConfig) -> float:
    try:
        return run_tsne(cfg)
    except UserError as err:
        log.error("%s", err)
        fail_job(err)
    except KeyboardInterrupt:  # tracking.mlflow_run has ended the run KILLED
        exit_interrupted()


if __name__ == "__main__":
    # As in mnist_bench.__main__: run the importable copy, which process launchers can pickle.
    from mnist_bench.tsne import main as importable_main

    run_command(importable_main, "tsne")
