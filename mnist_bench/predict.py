"""``python -m mnist_bench.predict``: the digit in each image file, read by a trained model.

Each picture is prepared as MNIST's digits were (``digits.py``), then the model, loaded with
MLflow's pyfunc loader from its exported (pt2) format, returns the probability of each digit.
Pickle-format models are refused (``cli.py`` turns MLflow's pickle loading off).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_bench.cli import CONF_DIR, UserError, first_line, run_command
from mnist_bench.config import choice
from mnist_bench.digits import FRAME, ImageError, Preparation, image_files, prepare, read_image

log = logging.getLogger("mnist_bench")
Invert = choice("Invert", "auto", "always", "never", module=__name__)


@dataclass
class PrepareConf:
    invert: Invert = Invert.auto
    denoise: bool = True
    crop: bool = True
    fit: bool = True
    center: bool = True


@dataclass
class PredictTrackingConf:
    uri: str | None = None


@dataclass
class PredictConfig:
    """Types of ``conf/predict.yaml``: a wrong type or key fails while Hydra composes."""

    model_uri: str = MISSING
    inputs: str = MISSING
    output: str | None = None
    request: str | None = None
    batch_size: int = 256
    prepare: PrepareConf = field(default_factory=PrepareConf)
    tracking: PredictTrackingConf = field(default_factory=PredictTrackingConf)


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


def check_model(model_uri: str) -> None:
    """Refuse, from its ``MLmodel`` file alone, any model but an mnist_bench PyTorch model: a
    model's ``python_function`` flavour may name its own loader module and ship its code, which
    MLflow would import, running it. (A pickled PyTorch model is refused by MLflow itself, as
    ``cli.py`` turns pickle loading off; ours are exported, pt2.)"""
    import mlflow

    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as err:  # MLflow raises its own, OSError ...
        raise UserError(f"model_uri={model_uri!r}: cannot be loaded from "
                        f"{mlflow.get_tracking_uri()} ({first_line(err)})") from None
    pyfunc, pytorch = (info.flavors.get(f) for f in ("python_function", "pytorch"))
    if (not pyfunc or not pytorch or pyfunc.get("loader_module") != "mlflow.pytorch"
            or pyfunc.get("code") or pytorch.get("code")):
        raise UserError(f"model_uri={model_uri!r}: refused: not a PyTorch model loaded by "
                        "mlflow.pytorch without code of its own (its MLmodel names another "
                        "loader or ships code, which loading would run)")
    if "mnist_bench_output" not in (info.metadata or {}):
        raise UserError(f"model_uri={model_uri!r}: not an mnist_bench digit model that returns "
                        "probabilities (models logged before that returned raw scores; train "
                        "it again)")


def load_model(model_uri: str):
    """The model as MLflow's pyfunc, once :func:`check_model` has accepted it."""
    import mlflow

    check_model(model_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as err:  # MLflow raises its own, OSError, or torch's errors
        raise UserError(f"model_uri={model_uri!r}: cannot be loaded from "
                        f"{mlflow.get_tracking_uri()} ({first_line(err)})") from None


def prepared_images(files: list[Path], steps: Preparation) -> tuple[list[Path], np.ndarray, int]:
    """The files that could be read, their 28x28 frames, and how many could not (each logged)."""
    kept, frames = [], []
    for path in files:
        try:
            frames.append(prepare(read_image(path), steps))
            kept.append(path)
        except ImageError as err:
            log.error("%s: %s", path, err)
    images = np.stack(frames)[:, None] if frames else np.zeros((0, 1, FRAME, FRAME), np.float32)
    return kept, images.astype(np.float32), len(files) - len(kept)


def predict_probabilities(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    batches = [np.asarray(model.predict(images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, 10), np.float32)


def prediction_table(files: list[Path], probabilities: np.ndarray) -> pd.DataFrame:
    order = np.argsort(-probabilities, axis=1)
    return pd.DataFrame({
        "file": [str(f) for f in files],
        "digit": order[:, 0],
        "probability": probabilities[np.arange(len(files)), order[:, 0]].round(4),
        "top3": [", ".join(f"{d} {p[d]:.2f}" for d in row[:3])
                 for row, p in zip(order, probabilities, strict=True)],
    })


def write_request(path: Path, images: np.ndarray) -> None:
    """The images as the body of a ``POST /invocations`` to ``mlflow models serve``."""
    path.write_text(json.dumps({"inputs": images.round(4).tolist()}))


def predict(cfg: DictConfig) -> int:
    """Print the table of predictions; returns the number of files that could not be read."""
    import mlflow

    from mnist_bench.tracking_store import existing_store, tracking_uri

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{' and '.join(missing)} must be given, e.g. python -m "
                        "mnist_bench.predict model_uri=models:/mnist-lenet@champion "
                        "inputs='my_digits/*.png'")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: must be an integer >= 1")
    for key in ("output", "request"):  # before the work, not after it
        target = cfg[key] and Path(cfg[key])
        if target and (target.is_dir() or not target.parent.is_dir()):
            raise UserError(f"{key}={cfg[key]!r}: not a file in an existing folder")
    files = image_files(cfg.inputs)
    if not files:
        raise UserError(f"inputs={cfg.inputs!r}: no such file, and no image file matches")
    store = tracking_uri(cfg.tracking.uri, HydraConfig.get().runtime.cwd)
    if cfg.model_uri.startswith(("models:/", "runs:/")):  # a model folder needs no store
        store = existing_store(store)
    mlflow.set_tracking_uri(store)
    model = load_model(cfg.model_uri)
    steps = Preparation(**OmegaConf.to_container(cfg.prepare, enum_to_str=True))
    kept, images, n_bad = prepared_images(files, steps)
    table = prediction_table(kept, predict_probabilities(model, images, cfg.batch_size))
    if len(table):
        print(table.to_string(index=False), flush=True)
    if cfg.output:
        table.to_csv(cfg.output, index=False)
    if cfg.request:
        write_request(Path(cfg.request), images)
    log.info("%d of %d files read%s", len(kept), len(files),
             f"; table written to {cfg.output}" if cfg.output else "")
    return n_bad


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        n_bad = predict(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    if n_bad:
        sys.exit(1)


if __name__ == "__main__":
    run_command(main, "predict")
