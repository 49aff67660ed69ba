"""``python -m mnist_bench``: the job run in this process through Hydra's compose API (fast
tier), the real command in a subprocess (``slow``), each read back through MLflow's client."""

import gc
import hashlib
import importlib
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_config import compose_cfg

from conftest import DATA_ROOT, run_cli, run_in_process, sqlite_uri
from mnist_bench import app_help
from mnist_bench.cli import CONF_DIR, UserError
from mnist_bench.data import configured_split, read_mnist

SMALL = ["trainer.epochs=1", "data.max_train_samples=2000", "tracking.log_model=false"]


def run_id_of(stdout: str) -> str:
    match = re.search(r"run_id=(\w+)", stdout)
    assert match, f"no summary line in output:\n{stdout}"
    return match.group(1)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, data_root):
    """One full-data MLP epoch with the default tracking URI (mlflow.db in the launch folder)."""
    cwd = tmp_path_factory.mktemp("launch")
    job = run_in_process(["model=mlp", "trainer.epochs=1", "optimizer.lr=0.001"], cwd)
    client = MlflowClient(tracking_uri=sqlite_uri(cwd))
    return job, client, client.get_run(job.run_id), cwd


def test_run_finishes_with_summary_and_accuracy(mlp_run):
    job, _, run, cwd = mlp_run
    assert run.info.status == "FINISHED"
    assert re.search(r"mlp lr=0.001: train_acc=0\.\d+ val_acc=0\.\d+ test_acc=0\.\d+", job.stdout)
    assert run.data.metrics["test_acc"] > 0.9  # fails if training is broken
    assert (cwd / "mlflow.db").is_file() and (job.output_dir / "checkpoint.pt").is_file()


def test_params_tags_and_metric_history(mlp_run):
    _, client, run, _ = mlp_run
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model.name"] == "mlp" and float(params["optimizer.lr"]) == 0.001
    assert params["trainer.batch_size"] == "64" and params["model.hidden"] == "[128, 32]"
    assert params["data.loader"] == "tensor"  # an Enum is logged as its value
    assert tags["model"] == "mlp" and tags["optimizer"] == "adam" and tags["device"] == "cpu"
    assert tags["hydra_overrides"].endswith("model=mlp trainer.epochs=1 optimizer.lr=0.001")
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"])
    assert run.info.run_name == "mlp lr=0.001 seed=42 trainer.epochs=1"  # what differs first
    for key in ("test_acc", "test_loss", "best_val_acc", "train_time_s", "n_params"):
        assert key in metrics
    assert metrics["n_params"] == 104_938 and metrics["train_time_s"] > 0
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1]


def test_datasets_are_logged_as_inputs(mlp_run):
    _, _, run, _ = mlp_run
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"mnist-train", "mnist-validation", "mnist-test"}
    shapes = {name: json.loads(d.dataset.profile)["features_shape"] for name, d in inputs.items()}
    assert shapes == {"mnist-train": [55_000, 28, 28], "mnist-validation": [5_000, 28, 28],
                      "mnist-test": [10_000, 28, 28]}
    contexts = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
                for name, d in inputs.items()}
    assert contexts == {"mnist-train": "train", "mnist-validation": "validation",
                        "mnist-test": "test"}
    # exactly those images: the MD5 of the raw files' MD5s and of the indices taken from them
    raw = DATA_ROOT / "MNIST" / "raw"
    expected = hashlib.md5()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        expected.update(hashlib.md5((raw / name).read_bytes()).hexdigest().encode())
    expected.update(configured_split(compose_cfg().data)[1].numpy().astype("<i8").tobytes())
    assert inputs["mnist-validation"].dataset.digest == expected.hexdigest()
    assert len({d.dataset.digest for d in inputs.values()}) == 3


def test_artifacts_and_logged_model(mlp_run):
    _, client, run, cwd = mlp_run
    run_id = run.info.run_id
    mlflow.set_tracking_uri(sqlite_uri(cwd))  # runs:/ URIs resolve against the global URI
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "figures", "classification_report.txt",
            "classification_report.json"} <= names  # hydra/: only a real launch writes it
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert figures == {"figures/curves.png", "figures/confusion_matrix.png"}
    report = json.loads(Path(client.download_artifacts(run_id, "classification_report.json",
                                                       str(cwd))).read_text())
    assert report["accuracy"] == pytest.approx(run.data.metrics["test_acc"])
    assert sum(report[str(d)]["support"] for d in range(10)) == 10_000
    model_uri = run.data.tags["model_uri"]
    assert model_uri == f"runs:/{run_id}/mlp-lr0_001-s42"  # named after the run
    model = mlflow.pytorch.load_model(model_uri)
    test_images, test_labels = read_mnist(DATA_ROOT, train=False)
    pixels = test_images[:500].unsqueeze(1).float() / 255  # no scaling: the model does it
    probabilities = model(pixels)
    assert probabilities.shape == (500, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(500), atol=1e-5)
    accuracy = (probabilities.argmax(dim=1) == test_labels[:500]).float().mean().item()
    assert accuracy == pytest.approx(run.data.metrics["test_acc"], abs=0.05)
    info = mlflow.models.get_model_info(model_uri)
    assert info.metadata["mnist_bench_output"].startswith("probabilities")
    signature = info.signature
    assert list(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 28, 28]
    assert list(signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]


def test_deterministic_runs_repeat_exactly_and_seed_zero_counts(tmp_path, data_root):
    common = ["model=lenet", "model.activation=relu", "trainer.deterministic=true",
              f"tracking.uri={sqlite_uri(tmp_path)}", *SMALL]
    # 42 is the default: "seed or 42" would make runs 1 and 3 equal
    ids = [run_in_process([*common, f"trainer.seed={seed}"], tmp_path).run_id
           for seed in (0, 0, 42)]
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    metrics = [client.get_run(i).data.metrics for i in ids]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "test_loss")
    assert [metrics[0][k] for k in keys] == [metrics[1][k] for k in keys]
    assert metrics[0]["train_loss"] != metrics[2]["train_loss"]  # seed 0 is not replaced


@pytest.mark.slow  # each tests the 10,000 test images with a large network: 6 s on 2 cores
@pytest.mark.parametrize("model", ["resnet18", "googlenet"])
def test_large_models_train_and_report_consistent_metrics(tmp_path, data_root, model):
    job = run_in_process([f"model={model}", "trainer.epochs=1", "data.max_train_samples=128",
                          "data.val_size=256", "tracking.log_model=false"], tmp_path)
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == model
    report = json.loads(Path(client.download_artifacts(
        job.run_id, "classification_report.json", str(tmp_path))).read_text())
    assert report["accuracy"] == pytest.approx(run.data.metrics["test_acc"])  # two computations
    assert np.isfinite(run.data.metrics["test_loss"])


def test_missing_data_is_one_paragraph_and_no_run(tmp_path):
    with pytest.raises(UserError) as err:
        run_in_process([f"data.root={tmp_path / 'empty'}", *SMALL], tmp_path)
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_unavailable_cuda_is_a_clear_error(tmp_path, data_root):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match="device=cuda was requested but cuda is not available"):
        run_in_process(["device=cuda", *SMALL], tmp_path)


def test_help_lists_groups_and_cfg_prints_config(tmp_path):
    help_text = run_cli(["--help"], cwd=tmp_path).stdout
    for line in ("model: googlenet, lenet, mlp, resnet18", "optimizer: adam, adamw, sgd",
                 "device: auto, cpu, cuda, mps"):
        assert line in help_text
    assert "_schema" not in help_text.split("== Composed config ==")[0]
    cfg_text = run_cli(["--cfg", "job", "model=resnet18"], cwd=tmp_path).stdout
    assert "_target_: mnist_bench.models.resnet.resnet18_mnist" in cfg_text
    assert "batch_size: 64" in cfg_text


@pytest.mark.parametrize("module, config, argv, shown", [
    ("mnist_bench.__main__", "config", ["model=lenet", "optimizer.lr=0.01", "--help"],
     "_target_: mnist_bench.models.lenet"),
    ("mnist_bench.tsne", "tsne", ["n_samples=500", "--help"], "n_samples: 500"),
    ("mnist_bench.predict", "predict", ["--help"], "model_uri: ???")])
def test_help_is_hydra_s_text_without_hydra_s_group_listings(tmp_path, capsys, module, config,
                                                             argv, shown):
    """A plain ``--help`` is answered through the compose API (mnist_bench/app_help.py) with
    exactly the text that Hydra's own ``--help`` prints (the control: Hydra's entry point run
    without the project's wrapper)."""
    hydra_own = run_cli(["-c", f"from {module} import main; main()", *argv], cwd=tmp_path,
                        module=None)
    assert hydra_own.returncode == 0, hydra_own.stderr
    importlib.import_module(module)  # registers its schema, as the command has when it answers
    assert app_help.print_help(CONF_DIR, config, argv)
    assert capsys.readouterr().out == hydra_own.stdout
    assert shown in hydra_own.stdout


def test_help_leaves_other_command_lines_to_hydra_and_names_a_bad_override(capsys):
    assert app_help.help_overrides(["-h", "model=lenet"]) == ["model=lenet"]
    for argv in (["model=lenet"], ["--help", "--resolve"], ["-m", "--help"]):
        assert app_help.help_overrides(argv) is None
        assert not app_help.print_help(CONF_DIR, "config", argv)
    # a template showing what only Hydra fills in (its flags, its group lists)
    assert app_help.help_text(CONF_DIR, "config", ["hydra.help.template=$FLAGS_HELP"]) is None
    for mistake, reason in (("model=nope", "Could not find 'model/nope'"),
                            ("trainer.epochs=abc", "'abc' of type 'str' could not be converted")):
        with pytest.raises(SystemExit) as end:
            app_help.print_help(CONF_DIR, "config", [mistake, "--help"])
        assert reason in str(end.value.code)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("module, mistake, message", [
    ("mnist_bench", "trainer.epochs=0", "trainer.epochs=0: must be an integer >= 1"),
    ("mnist_bench.tsne", "n_samples=10", "n_samples=10: must be an integer >= 50")])
def test_config_error_is_one_message_before_torch_is_imported(tmp_path, module, mistake, message):
    proc = run_cli([mistake, "-c", "job"], cwd=tmp_path, module=module)  # --cfg: composes only
    assert proc.returncode == 0
    probe = (f"import sys, runpy; sys.argv = ['{module}', '{mistake}']\n"
             f"try:\n    runpy.run_module('{module}', run_name='__main__', alter_sys=True)\n"
             "except SystemExit as e:\n"
             "    print('torch' in sys.modules, 'mlflow' in sys.modules, e.code)\n")
    proc = run_cli(["-c", probe], cwd=tmp_path, module=None)
    assert proc.stdout.split() == ["False", "False", "1"], proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_commands_that_read_runs_import_neither_torch_nor_the_training_code(tmp_path):
    probe = ("import sys, mnist_bench.report_tables, mnist_bench.model_registry, mnist_bench.runs, "
             "mnist_bench.tracking_store\n"
             "print(sorted({'torch', 'mnist_bench.tracking'} & set(sys.modules)))")
    proc = run_cli(["-c", probe], cwd=tmp_path, module=None)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["report", "register", "runs"])
def test_the_commands_that_read_runs_answer_help_and_a_wrong_option_before_importing_mlflow(
        tmp_path, command):
    probe = ("import runpy, sys\n"
             "try:\n"
             f"    runpy.run_module('mnist_bench.{command}', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print('mlflow' in sys.modules, 'pandas' in sys.modules, e.code)\n")
    helped = run_cli(["-c", probe, "--help"], cwd=tmp_path, module=None)
    assert helped.stdout.splitlines()[-1] == "False False 0", helped.stdout + helped.stderr
    assert f"usage: python -m mnist_bench.{command}" in helped.stdout
    wrong = run_cli(["-c", probe, "--experimnet", "x"], cwd=tmp_path, module=None)
    assert wrong.stdout.split() == ["False", "False", "2"], wrong.stdout + wrong.stderr
    assert "unrecognized arguments: --experimnet x" in wrong.stderr


def test_training_collects_garbage_and_the_job_leaves_the_collector_as_it_was(
        tmp_path, data_root, monkeypatch):
    """The collector is paused while a job imports and builds (mnist_bench/gc_control.py), but
    the training loop must collect (cycles made per step would pile up over a long run), and
    after a job, also one that fails, nothing stays paused or frozen."""
    from mnist_bench import job as job_module

    seen = []

    def recording_fit(*args, **kwargs):
        seen.append(gc.isenabled())
        return fit(*args, **kwargs)

    fit = job_module.fit
    monkeypatch.setattr(job_module, "fit", recording_fit)
    run_in_process(SMALL, tmp_path)
    assert seen == [True]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with pytest.raises(UserError):  # fails inside the job, after the imports
        run_in_process([f"data.root={tmp_path / 'empty'}", *SMALL], tmp_path)
    assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.slow
def test_quickstart_command_end_to_end(tmp_path, data_root):
    """The README's command, as a user types it: default store in the launch folder."""
    proc = run_cli(["model=mlp", "trainer.epochs=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = MlflowClient(tracking_uri=sqlite_uri(tmp_path)).get_run(run_id_of(proc.stdout))
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] > 0.85
    assert "epoch 1/1" in proc.stderr  # the tqdm progress bar
    assert list((tmp_path / "outputs").glob("*/*/.hydra"))
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml"} <= hydra_files
