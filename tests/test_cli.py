"""The real ``python -m mnist_bench`` in a subprocess, on the real MNIST copy, read back through
MLflow's own client."""

import re

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli, sqlite_uri

SMALL = ["trainer.epochs=1", "data.max_train_samples=2000", "tracking.log_model=false"]


def run_id_of(stdout: str) -> str:
    match = re.search(r"run_id=(\w+)", stdout)
    assert match, f"no summary line in output:\n{stdout}"
    return match.group(1)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, data_root):
    """One full-data MLP epoch with the default tracking URI (mlflow.db in the launch folder)."""
    cwd = tmp_path_factory.mktemp("launch")
    proc = run_cli(["model=mlp", "trainer.epochs=1", "optimizer.lr=0.001"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=sqlite_uri(cwd))
    return proc, client, client.get_run(run_id_of(proc.stdout)), cwd


def test_run_finishes_with_summary_and_accuracy(mlp_run):
    proc, _, run, cwd = mlp_run
    assert run.info.status == "FINISHED"
    assert re.search(r"mlp lr=0.001: train_acc=0\.\d+ val_acc=0\.\d+ test_acc=0\.\d+", proc.stdout)
    assert run.data.metrics["test_acc"] > 0.9  # fails if training is broken
    assert "epoch 1/1" in proc.stderr  # the tqdm progress bar
    assert (cwd / "mlflow.db").is_file() and list((cwd / "outputs").glob("*/*/.hydra"))


def test_params_tags_and_metric_history(mlp_run):
    _, client, run, _ = mlp_run
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model.name"] == "mlp" and float(params["optimizer.lr"]) == 0.001
    assert params["trainer.batch_size"] == "64" and params["model.hidden"] == "[128, 32]"
    assert tags["model"] == "mlp" and tags["optimizer"] == "adam" and tags["device"] == "cpu"
    assert tags["hydra_overrides"] == "model=mlp trainer.epochs=1 optimizer.lr=0.001"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"])
    assert run.info.run_name == "model=mlp,optimizer.lr=0.001,trainer.epochs=1"
    for key in ("test_acc", "test_loss", "best_val_acc", "train_time_s", "n_params"):
        assert key in metrics
    assert metrics["n_params"] == 104_938 and metrics["train_time_s"] > 0
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1]


def test_artifacts_and_logged_model(mlp_run):
    _, client, run, cwd = mlp_run
    run_id = run.info.run_id
    mlflow.set_tracking_uri(sqlite_uri(cwd))  # runs:/ URIs resolve against the global URI
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "hydra", "figures", "classification_report.txt",
            "classification_report.json"} <= names
    hydra_files = {a.path for a in client.list_artifacts(run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml"} <= hydra_files
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert figures == {"figures/curves.png", "figures/confusion_matrix.png"}
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    assert model(torch.from_numpy(images)).shape == (3, 10)
    signature = mlflow.models.get_model_info(f"runs:/{run_id}/model").signature
    assert list(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 28, 28]
    assert list(signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]


def test_deterministic_runs_repeat_exactly_and_seed_zero_counts(tmp_path, data_root):
    uri = sqlite_uri(tmp_path)
    common = ["model=lenet", "model.activation=relu", "trainer.deterministic=true",
              f"tracking.uri={uri}", *SMALL]
    ids = []
    for seed in (0, 0, 42):  # 42 is the default: "seed or 42" would make runs 1 and 3 equal
        proc = run_cli([*common, f"trainer.seed={seed}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        ids.append(run_id_of(proc.stdout))
    client = MlflowClient(tracking_uri=uri)
    metrics = [client.get_run(i).data.metrics for i in ids]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "test_loss")
    assert [metrics[0][k] for k in keys] == [metrics[1][k] for k in keys]
    assert metrics[0]["train_loss"] != metrics[2]["train_loss"]  # seed 0 is not replaced


@pytest.mark.parametrize("model", ["resnet18", "googlenet"])
def test_large_models_train_through_the_cli(tmp_path, data_root, model):
    proc = run_cli([f"model={model}", f"tracking.uri={sqlite_uri(tmp_path)}", "trainer.epochs=1",
                    "data.max_train_samples=128", "data.val_size=256",
                    "tracking.log_model=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = MlflowClient(tracking_uri=sqlite_uri(tmp_path)).get_run(run_id_of(proc.stdout))
    assert run.info.status == "FINISHED" and run.data.tags["model"] == model
    assert 0.0 <= run.data.metrics["test_acc"] <= 1.0


def test_missing_data_gives_one_paragraph_and_no_run(tmp_path):
    proc = run_cli([f"data.root={tmp_path / 'empty'}", f"tracking.uri={sqlite_uri(tmp_path)}"],
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert str(tmp_path / "empty" / "MNIST" / "raw") in proc.stderr
    assert "train-images-idx3-ubyte" in proc.stderr and "t10k-labels-idx1-ubyte" in proc.stderr
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    assert client.search_runs(experiment_ids=[e.experiment_id for e in
                                              client.search_experiments()]) == []


def test_help_lists_groups_and_cfg_prints_config(tmp_path):
    help_text = run_cli(["--help"], cwd=tmp_path).stdout
    for line in ("model: googlenet, lenet, mlp, resnet18", "optimizer: adam, adamw, sgd",
                 "device: auto, cpu, cuda, mps"):
        assert line in help_text
    cfg_text = run_cli(["--cfg", "job", "model=resnet18"], cwd=tmp_path).stdout
    assert "_target_: mnist_bench.models.resnet.resnet18_mnist" in cfg_text
    assert "batch_size: 64" in cfg_text


def test_unavailable_cuda_is_a_clear_error(tmp_path):
    proc = run_cli(["device=cuda", f"tracking.uri={sqlite_uri(tmp_path)}", *SMALL], cwd=tmp_path)
    if torch.cuda.is_available():
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "cuda is not available" in proc.stderr
