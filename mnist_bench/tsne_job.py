"""One t-SNE map of ``python -m mnist_bench.tsne``, for a config whose values are checked.

Reads top to bottom: draw the images, turn them into pixels or into the penultimate-layer
features of a trained model, embed them (:mod:`mnist_bench.embedding`), score and draw the map,
and record it all in one MLflow run tagged ``tsne``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patheffects import withStroke
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from mnist_bench import checkpoint, embedding, plots, tracking, tracking_store
from mnist_bench.cli import UserError, first_line
from mnist_bench.config import MODEL_SCHEMAS, build
from mnist_bench.data import DataError, ensure_mnist, scale_images
from mnist_bench.embedding import TSNEParams
from mnist_bench.models.classifier import network_weights

log = logging.getLogger("mnist_bench.tsne")


def sample_mnist(root: str | Path, subset: str, n_samples: int, seed: int,
                 check_md5: bool = True) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n_samples`` images drawn at random from a subset: uint8 (N, 28, 28), labels, indices."""
    try:
        images, labels = ensure_mnist(root, check_md5=check_md5).split(train=subset == "train")
    except DataError as err:
        raise UserError(str(err)) from None
    if n_samples > len(labels):
        raise UserError(f"n_samples={n_samples}: the {subset} subset holds {len(labels):,} "
                        f"images; choose n_samples <= {len(labels)}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    indices = order[:n_samples]
    return images[indices], labels[indices].numpy(), indices.numpy()


@dataclass
class TrainedModel:
    network: nn.Module
    normalize: str             # how the images were scaled in training
    run_id: str | None = None  # the MLflow run that trained it, if known


def _with_weights(model_cfg: DictConfig, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    try:
        network = build(model_cfg, "model")
    except ValueError as err:
        raise UserError(f"model_uri={source!r}: its model config is refused: {err}") from None
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]  # torch lists every key, over many lines
        raise UserError(f"model_uri={source!r}: its weights do not fit model={model_cfg.name} "
                        f"({detail})") from None
    return network


def _from_checkpoint(path: Path, cfg: DictConfig) -> TrainedModel:
    if cfg.model is None:
        raise UserError(f"model_uri={str(path)!r}: a checkpoint does not say which network it "
                        f"holds; add model=<{'|'.join(MODEL_SCHEMAS)}> with the options it was "
                        "trained with (e.g. model.activation=relu)")
    try:
        state = checkpoint.load_checkpoint(path)
    except checkpoint.CheckpointError as err:
        raise UserError(f"model_uri: {err}") from None
    return TrainedModel(_with_weights(cfg.model, state["model"], str(path)), cfg.data.normalize)


def _from_run(model_uri: str) -> TrainedModel:
    """Rebuild the network from the run's ``config.yaml`` and give it the logged weights.

    MLflow 3 saves PyTorch models in its "pt2" format (``torch.export``) by default; what it
    loads back is a graph whose ``nn.Linear`` layers are gone, so the forward hook needs the
    network rebuilt.
    """
    try:
        run_id = RunsArtifactRepository.parse_runs_uri(model_uri)[0]
        trained_with = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
        logged = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except (MlflowException, OSError) as err:
        raise UserError(f"model_uri={model_uri!r}: no mnist_bench model there in the tracking "
                        f"store {mlflow.get_tracking_uri()} ({first_line(err)})") from None
    network = _with_weights(trained_with.model, network_weights(logged.state_dict()), model_uri)
    return TrainedModel(network, trained_with.data.normalize, run_id)


def load_trained_model(model_uri: str, cfg: DictConfig) -> TrainedModel:
    """``runs:/<run id>/<model name>`` of a training run, or a checkpoint file of the network that
    ``model=<name>`` selects (scaled as ``data.normalize`` says)."""
    if Path(model_uri).is_file():
        return _from_checkpoint(Path(model_uri), cfg)
    if not model_uri.startswith("runs:/"):
        raise UserError(f"model_uri={model_uri!r}: not a file, and not runs:/<run id>/<model name>")
    return _from_run(model_uri)


@torch.no_grad()
def penultimate_features(network: nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """The inputs of the network's last ``nn.Linear`` (its penultimate layer) for float images.

    A forward hook finds them in every network here, including GoogLeNet, whose auxiliary
    heads are registered before its final classifier and do not run in eval mode.
    """
    last_linear = [m for m in network.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = last_linear.register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0].flatten(1)))
    network.eval()
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="features", unit="batch"):
            network(images[start:start + batch_size])
    finally:
        hook.remove()
    return torch.cat(captured).numpy()


def pixels(images: torch.Tensor, normalize: str) -> np.ndarray:
    """(N, 784) float32 rows of uint8 images, scaled as ``data.normalize`` says."""
    return scale_images(images, normalize).flatten(1).numpy()


def model_inputs(cfg: DictConfig, images: torch.Tensor) -> tuple[np.ndarray, dict[str, str]]:
    """What is embedded (pixels, or features of ``cfg.model_uri``) and the tags that say so."""
    if cfg.source == "pixels":
        return pixels(images, cfg.data.normalize), {"source": "pixels"}
    trained = load_trained_model(cfg.model_uri, cfg)
    features = penultimate_features(trained.network, scale_images(images, trained.normalize),
                                    cfg.batch_size)
    tags = {"source": "features", "model_uri": cfg.model_uri,
            "model_class": type(trained.network).__name__, "feature_normalize": trained.normalize}
    return features, tags | ({"source_run_id": trained.run_id} if trained.run_id else {})


def plot_embedding(points: np.ndarray, labels: np.ndarray, title: str) -> Figure:
    """One dot per image coloured by digit, a legend, and each digit written at its centre."""
    fig, ax = plots.plt.subplots(figsize=(8, 7.2))
    colours = plots.plt.get_cmap("tab10")
    size = float(np.clip(10_000 / len(points), 0.8, 20))
    ax.scatter(points[:, 0], points[:, 1], c=colours(labels), s=size, linewidths=0, alpha=0.7,
               rasterized=True)
    for digit in np.unique(labels):
        x, y = np.median(points[labels == digit], axis=0)
        ax.text(x, y, str(digit), fontsize=18, weight="bold", ha="center", va="center",
                color=colours(digit), path_effects=[withStroke(linewidth=4, foreground="white")])
    handles = [Line2D([], [], marker="o", linestyle="", color=colours(d), label=str(d))
               for d in range(10)]
    ax.legend(handles=handles, title="digit", loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    ax.set(title=title, xticks=[], yticks=[])
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig


def cluster_table(points: np.ndarray, labels: np.ndarray, seed: int) -> pd.DataFrame:
    """Per digit: images, spread and silhouette, most compact digit first."""
    table = pd.DataFrame({"images": pd.Series(labels).value_counts(),
                          "spread": embedding.class_spread(points, labels),
                          "silhouette": embedding.class_silhouette(points, labels, seed)})
    table.index.name = "digit"
    return table.sort_values("spread")


def describe(cfg: DictConfig, tags: dict[str, str]) -> str:
    """``pixels n=1000 opentsne`` or ``features of runs:/.../model n=1000 opentsne``."""
    source = "pixels" if cfg.source == "pixels" else f"features of {tags['model_uri']}"
    return f"{source} n={cfg.n_samples} {cfg.tsne.backend}"


def map_title(cfg: DictConfig, tags: dict[str, str], knn_acc: float) -> str:
    what = "pixels" if cfg.source == "pixels" else f"{tags['model_class']} features"
    return (f"t-SNE of {cfg.n_samples:,} MNIST {cfg.subset} images ({what})\n"
            f"{cfg.tsne.backend}, perplexity {cfg.tsne.perplexity:g}; "
            f"10-NN accuracy on held-out points {knn_acc:.3f}")


def embed_and_score(x: np.ndarray, labels: np.ndarray, params: TSNEParams, pca_dims: int,
                    seed: int) -> tuple[np.ndarray, dict[str, float], pd.DataFrame]:
    """The 2-D map of ``x``, its metrics (knn_acc, tsne_time_s, spread_<d>, silhouette_<d> ...)
    and its per-digit table."""
    start = time.perf_counter()
    points = embedding.tsne(x, params, pca_dims, seed)
    metrics = {"tsne_time_s": time.perf_counter() - start,
               "knn_acc": embedding.knn_accuracy(points, labels, seed),
               "input_dim": x.shape[1], "n_samples": len(points)}
    table = cluster_table(points, labels, seed)
    for column in ("spread", "silhouette"):
        metrics |= {f"{column}_{digit}": value for digit, value in table[column].items()}
    return points, metrics, table


def save_outputs(folder: Path, points: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 table: pd.DataFrame, title: str) -> list[Path]:
    """The picture, the embedding (NPZ: embedding, labels, indices into the subset) and the
    per-digit table, written to ``folder``."""
    paths = [folder / "tsne.png", folder / "embedding.npz", folder / "cluster_spread.csv"]
    plots.save(plot_embedding(points, labels, title), paths[0])
    np.savez_compressed(paths[1], embedding=points, labels=labels, indices=indices)
    table.to_csv(paths[2], float_format="%.4f")
    return paths


def embed_and_track(cfg: DictConfig) -> float:
    """Embed, score, draw and track, for a config whose values are checked; returns the map's
    10-NN accuracy."""
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    images, labels, indices = sample_mnist(cfg.data.root, cfg.subset, cfg.n_samples, cfg.seed,
                                           cfg.data.verify_md5)
    tracking_store.open_configured_store(cfg.tracking, hc.runtime.cwd)
    x, tags = model_inputs(cfg, images)
    tags |= {"run_type": "tsne", "tsne": "true", "backend": cfg.tsne.backend,
             "hydra_output_dir": str(output_dir)}
    name = cfg.tracking.run_name or describe(cfg, tags)
    with tracking.mlflow_run(None, name, tags, resumable=False) as run_id:
        tracking.log_config(cfg, output_dir / ".hydra")
        points, metrics, table = embed_and_score(x, labels, OmegaConf.to_object(cfg.tsne),
                                                 cfg.pca_dims, cfg.seed)
        mlflow.log_metrics(metrics)
        title = map_title(cfg, tags, metrics["knn_acc"])
        for path in save_outputs(output_dir, points, labels, indices, table, title):
            mlflow.log_artifact(str(path))
    log.info("per digit, most compact first (spread: mean distance to the digit's centre over "
             "that of the whole map):\n%s", table.to_string(float_format="%.3f"))
    print(f"tsne {describe(cfg, tags)}: knn_acc={metrics['knn_acc']:.4f} "
          f"tsne_time_s={metrics['tsne_time_s']:.1f} figure={output_dir / 'tsne.png'} "
          f"run_id={run_id}", flush=True)
    return metrics["knn_acc"]
