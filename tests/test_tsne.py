"""The real ``python -m mnist_bench.tsne`` in a subprocess, on the real MNIST copy, read back
through MLflow's own client."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from test_cli import run_id_of
from test_config import compose_cfg

from conftest import run_cli, run_in_process, sqlite_uri
from mnist_bench import tracking, tsne_job
from mnist_bench.cli import UserError
from mnist_bench.data import read_mnist, scale_images
from mnist_bench.models.mlp import MLP
from mnist_bench.tsne_job import load_trained_model, penultimate_features, sample_mnist

SMALL = ["n_samples=400"]


def tsne_cli(args: list[str], folder: Path, job: str):
    return run_cli([*args, f"tracking.uri={sqlite_uri(folder)}", f"hydra.run.dir={folder / job}"],
                   cwd=folder, module="mnist_bench.tsne")


def tsne_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.run_type = 'tsne'")


def map_of(client: MlflowClient, run_id: str, folder: Path) -> dict[str, np.ndarray]:
    """The embedding NPZ, downloaded from the run's artifacts."""
    path = client.download_artifacts(run_id, "embedding.npz", str(folder))
    with np.load(path) as npz:
        return dict(npz)


def own_centre_ratio(points: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Per digit: mean distance of its points to their own centre over the mean distance of
    the same points to the other digits' centres. Random points give about 1."""
    centres = {d: points[labels == d].mean(axis=0) for d in np.unique(labels)}
    ratios = {}
    for digit, centre in centres.items():
        mine = points[labels == digit]
        others = [np.linalg.norm(mine - c, axis=1).mean() for d, c in centres.items() if d != digit]
        ratios[int(digit)] = np.linalg.norm(mine - centre, axis=1).mean() / np.mean(others)
    return ratios


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, MlflowClient]:
    folder = tmp_path_factory.mktemp("tsne")
    return folder, MlflowClient(tracking_uri=sqlite_uri(folder))


@pytest.fixture(scope="module")
def trained_mlp(store, data_root) -> tuple[str, Path]:
    """A one-epoch MLP logged to the store: its run id and its checkpoint."""
    folder, _ = store
    job = run_in_process(["model=mlp", "trainer.epochs=1", "data.max_train_samples=5000",
                          "optimizer.lr=0.001", f"tracking.uri={sqlite_uri(folder)}"], folder)
    return job.run_id, job.output_dir / "checkpoint.pt"


def test_pixel_map_is_tracked_and_clusters_the_digits(store, data_root):
    folder, client = store
    proc = tsne_cli(SMALL, folder, "pixels")
    assert proc.returncode == 0, proc.stderr
    run = client.get_run(run_id_of(proc.stdout))
    assert run.info.status == "FINISHED"
    assert run.data.tags["run_type"] == "tsne" and "tsne" in run.data.tags
    assert run.data.tags["source"] == "pixels"
    metrics = run.data.metrics
    assert metrics["input_dim"] == 784 and metrics["n_samples"] == 400
    assert metrics["knn_acc"] > 0.6  # about 0.75 at 400 points; a map that mixes digits: 0.1
    assert {f"spread_{d}" for d in range(10)} | {f"silhouette_{d}" for d in range(10)} <= set(
        metrics)
    assert "t-SNE:" in proc.stderr  # the progress bar
    assert "most compact first" in proc.stdout + proc.stderr  # the per-digit table (logged)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tsne.png", "embedding.npz", "cluster_spread.csv"} <= artifacts
    png = Path(client.download_artifacts(run.info.run_id, "tsne.png", str(folder)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000

    saved = map_of(client, run.info.run_id, folder)
    points, labels = saved["embedding"], saved["labels"]
    assert points.shape == (400, 2) and np.isfinite(points).all()
    assert len(set(saved["indices"])) == 400  # 400 different images...
    truth = read_mnist(data_root, train=True)[1].numpy()
    np.testing.assert_array_equal(labels, truth[saved["indices"]])  # ...with their own labels
    ratios = own_centre_ratio(points, labels)
    assert max(ratios.values()) < 0.85, ratios  # every digit nearer its own centre
    shuffled = own_centre_ratio(points, np.random.default_rng(0).permutation(labels))
    assert min(shuffled.values()) > 0.9  # the check fails for a map that ignores the labels


@pytest.mark.slow
def test_feature_map_of_a_model_trained_here(store, trained_mlp):
    folder, client = store
    run_id, _ = trained_mlp
    model_uri = client.get_run(run_id).data.tags["model_uri"]
    proc = tsne_cli([*SMALL, "source=features", f"model_uri={model_uri}"], folder, "features")
    assert proc.returncode == 0, proc.stderr
    run = client.get_run(run_id_of(proc.stdout))
    assert run.data.tags["source"] == "features" and run.data.tags["source_run_id"] == run_id
    assert run.data.metrics["input_dim"] == 32  # the MLP's penultimate layer, not the pixels
    assert run.data.metrics["knn_acc"] > 0.6
    assert map_of(client, run.info.run_id, folder)["embedding"].shape == (400, 2)


def test_checkpoint_features_need_the_network_named(trained_mlp, data_root):
    """In process, to save a start-up: the CLI path is the one tested above."""
    _, checkpoint = trained_mlp
    cfg = OmegaConf.create({"model": None, "data": {"normalize": "unit"}})
    with pytest.raises(UserError, match="a checkpoint does not say which network"):
        load_trained_model(str(checkpoint), cfg)
    cfg.model = compose_cfg("model=mlp").model  # as model=mlp composes it
    trained = load_trained_model(str(checkpoint), cfg)
    images, _, _ = sample_mnist(data_root, "test", 100, seed=0)
    features = penultimate_features(trained.network, scale_images(images, "unit"), 64)
    assert features.shape == (100, 32) and (features >= 0).all()  # after the MLP's ReLU
    cfg.model = compose_cfg("model=lenet").model
    with pytest.raises(UserError, match="its weights do not fit model=lenet"):
        load_trained_model(str(checkpoint), cfg)


@pytest.mark.parametrize(("selection", "message"), [
    ("n_samples=70000", "the train subset holds 60,000 images"),
    ("source=features model_uri=runs:/0123456789abcdef0123456789abcdef/model",
     "Run with id=0123456789abcdef0123456789abcdef not found"),
])
def test_bad_selections_give_a_clear_error_and_no_run(store, selection, message):
    folder, client = store
    runs_before = len(tsne_runs(client))
    with pytest.raises(UserError, match=message):
        run_in_process([*selection.split(), f"tracking.uri={sqlite_uri(folder)}"], folder,
                       app="tsne")
    assert len(tsne_runs(client)) == runs_before


def test_an_interrupted_map_ends_killed_without_offering_a_resume(store, monkeypatch, caplog):
    folder, client = store

    def ctrl_c(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tsne_job, "embed_and_score", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_in_process([*SMALL, f"tracking.uri={sqlite_uri(folder)}"], folder, app="tsne")
    run = max(tsne_runs(client), key=lambda r: r.info.start_time)
    assert run.info.status == "KILLED"
    assert f"interrupted: MLflow run {run.info.run_id} ended KILLED" in caplog.text
    assert "resume=" not in caplog.text  # a map keeps no checkpoint to resume from


class Trap(torch.nn.Linear):
    """A model whose unpickling opens (creates) ``marker``: what a tampered store could hold."""

    def __init__(self, marker: Path) -> None:
        super().__init__(2, 2)
        self.marker = marker

    def __reduce_ex__(self, _protocol):
        return (open, (str(self.marker), "w"))


def test_a_pickled_model_in_the_store_is_refused_unopened(store, trained_mlp, tmp_path):
    folder, client = store
    mlflow.set_tracking_uri(sqlite_uri(folder))
    config = mlflow.artifacts.load_text(f"runs:/{trained_mlp[0]}/config.yaml")
    marker = tmp_path / "code_ran"
    with mlflow.start_run() as run:
        mlflow.log_text(config, "config.yaml")
        mlflow.pytorch.log_model(Trap(marker), name="model", serialization_format="pickle")
    model_uri = f"runs:/{run.info.run_id}/model"
    cfg = OmegaConf.create({"model": None, "data": {"normalize": "unit"}})
    with pytest.raises(UserError, match="Deserializing model using pickle is disallowed"):
        load_trained_model(model_uri, cfg)
    assert not marker.exists()
    saved = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path)))
    torch.load(saved / "data" / "model.pth", weights_only=False)  # the trap is real:
    assert marker.exists()  # a plain unpickle runs it


def test_a_stored_config_with_a_foreign_target_is_refused(store, trained_mlp, tmp_path):
    folder, _ = store
    mlflow.set_tracking_uri(sqlite_uri(folder))
    config = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{trained_mlp[0]}/config.yaml"))
    marker = tmp_path / "created_by_open"
    config.model = {"_target_": "builtins.open", "name": "mlp", "file": str(marker), "mode": "w"}
    with mlflow.start_run() as run:  # a real model beside a tampered config.yaml
        mlflow.log_text(OmegaConf.to_yaml(config), "config.yaml")
        tracking.log_model(MLP(), torch.rand(2, 1, 28, 28), "unit", "model")
    cfg = OmegaConf.create({"model": None, "data": {"normalize": "unit"}})
    with pytest.raises(UserError, match="model._target_='builtins.open'"):
        load_trained_model(f"runs:/{run.info.run_id}/model", cfg)
    assert not marker.exists()
