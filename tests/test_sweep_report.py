"""A small real sweep on real data, then the report command, read back through MLflow."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import SMALL_SWEEP, compose_job, run_cli, sqlite_uri
from mnist_bench import checkpoint, report


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def training_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("mnist_bench")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("run_type") != "report"]


def test_sweep_jobs_share_one_sweep_id_and_output_folders(sweep):
    cwd, client, _ = sweep
    runs = training_runs(client)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert sorted((r.data.tags["model"], float(r.data.params["optimizer.lr"])) for r in runs) == [
        ("lenet", 0.001), ("lenet", 0.01), ("mlp", 0.001), ("mlp", 0.01)]
    job_dirs = sorted(p.name for p in (cwd / "multirun").glob("*/*/*") if p.is_dir())
    assert job_dirs == ["0", "1", "2", "3"]


def test_tables_hold_one_row_per_model_and_lr(sweep):
    cwd, _, _ = sweep
    for model in ("mlp", "lenet"):
        rows = read_csv(cwd / "report" / f"table_{model}.csv")
        assert sorted(float(r["lr"]) for r in rows) == [0.001, 0.01]
        for row in rows:
            assert row["outcome"] == "ok"
            for key in ("train_acc", "val_acc", "test_acc"):
                assert 0.0 <= float(row[key]) <= 1.0
        paper = {float(r["lr"]): r["paper_test_acc"] for r in rows}
        assert paper[0.01] and not paper[0.001]  # published numbers only where the paper has them
        assert (cwd / "report" / f"table_{model}.md").read_text().count("\n| ") == 2


def test_table4_picks_the_best_learning_rate(sweep):
    cwd, client, _ = sweep
    val_acc: dict[str, dict[float, float]] = {}
    for run in training_runs(client):
        lr = float(run.data.params["optimizer.lr"])
        val_acc.setdefault(run.data.tags["model"], {})[lr] = run.data.metrics["val_acc"]
    rows = {r["model"]: r for r in read_csv(cwd / "report" / "table4_best.csv")}
    assert set(rows) == {"mlp", "lenet"}
    for model, by_lr in val_acc.items():
        chosen = float(rows[model]["lr"])
        assert by_lr[chosen] == max(by_lr.values())
        assert float(rows[model]["val_acc"]) == pytest.approx(by_lr[chosen])
        assert float(rows[model]["train_time_s"]) > 0


def test_figures_are_valid_pngs_embedded_in_the_index(sweep):
    cwd, _, _ = sweep
    index = (cwd / "report" / "index.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", index)
    expected = {"mlp_curves.png", "lenet_curves.png", "mlp_train_time.png",
                "lenet_train_time.png", "overview_val_acc.png", "train_time_best.png"}
    assert expected <= set(figures)
    for name in figures:
        with Image.open(cwd / "report" / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300


def test_report_is_logged_as_a_tagged_run(sweep):
    _, client, proc = sweep
    run_id = re.search(r"MLflow run (\w+)", proc.stdout).group(1)
    run = client.get_run(run_id)
    assert run.data.tags["run_type"] == "report"
    files = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/index.md", "report/table4_best.csv", "report/table_mlp.md"} <= files


def test_report_without_runs_is_a_clear_error(tmp_path, capsys):
    assert report.main(["--tracking-uri", sqlite_uri(tmp_path)]) == 2
    assert "experiment 'mnist_bench' does not exist" in capsys.readouterr().err


def test_report_of_an_unknown_sweep_is_a_clear_error(sweep, tmp_path, capsys):
    cwd, _, _ = sweep
    assert report.main(["--tracking-uri", sqlite_uri(cwd), "--sweep-id", "nope",
                        "--out", str(tmp_path / "report")]) == 2
    assert ("no training runs found for sweep 'nope' in experiment 'mnist_bench'"
            in capsys.readouterr().err)
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_failed_job_does_not_stop_the_sweep_or_the_report(tmp_path, data_root):
    """lr=1e12 with SGD diverges; the other job and the report survive, the sweep exits 1."""
    uri = sqlite_uri(tmp_path)
    proc = run_cli(["--multirun", "model=mlp", "optimizer=sgd", "optimizer.lr=0.05,1e12",
                    f"tracking.uri={uri}", "trainer.log_every_n_steps=5", *SMALL_SWEEP],
                   cwd=tmp_path)
    assert proc.returncode != 0
    runs = {float(r.data.params["optimizer.lr"]): r for r in
            training_runs(MlflowClient(tracking_uri=uri))}
    assert runs[0.05].info.status == "FINISHED"
    assert runs[1e12].info.status == "FAILED" and runs[1e12].data.tags["diverged"] == "true"
    report = run_cli(["--tracking-uri", uri, "--out", str(tmp_path / "report")], cwd=tmp_path,
                     module="mnist_bench.report")
    assert report.returncode == 0, report.stderr
    rows = {float(r["lr"]): r for r in read_csv(tmp_path / "report" / "table_mlp.csv")}
    assert rows[1e12]["outcome"] == "diverged" and rows[0.05]["outcome"] == "ok"
    assert "diverged" in (tmp_path / "report" / "table_mlp.md").read_text()


def test_runs_that_share_a_learning_rate_each_keep_their_curve():
    """``--all-runs`` over two sweeps: two MLP runs at lr 0.01 are two lines, not one."""
    runs = pd.DataFrame({"model": ["mlp", "mlp", "mlp"], "lr": [0.01, 0.01, 0.001],
                         "run_id": ["aaaaaaa111", "bbbbbbb222", "ccccccc333"]})
    curves = {run_id: [{"val_acc": float(i)}] for i, run_id in enumerate(runs["run_id"])}
    [(title, by_label)] = report.curves_by_model(runs, curves).items()
    assert by_label == {"lr=0.01 (aaaaaaa)": [{"val_acc": 0.0}],
                        "lr=0.01 (bbbbbbb)": [{"val_acc": 1.0}],
                        "lr=0.001": [{"val_acc": 2.0}]}


def test_each_launch_gets_its_own_sweep_folder(tmp_path):
    """The folder Hydra's launcher creates, resolved as it does: stable within one launch."""
    dirs = []
    for _ in range(2):
        cfg = compose_job(["trainer.epochs=1"], tmp_path)
        dirs.append(cfg.hydra.sweep.dir)
        assert cfg.hydra.sweep.dir == dirs[-1]  # the cached draw, not a new one per read
    assert dirs[0] != dirs[1]
    assert re.fullmatch(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-[0-9a-f]{6}", dirs[0])


@pytest.mark.slow
def test_two_sweeps_started_together_keep_apart(tmp_path, data_root):
    uri = sqlite_uri(tmp_path)
    args = [sys.executable, "-m", "mnist_bench", "--multirun", "model=mlp", "optimizer.lr=0.01",
            f"tracking.uri={uri}", *SMALL_SWEEP]
    env = {**os.environ, "MNIST_DATA_ROOT": str(data_root)}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs), [p.stderr.read() for p in procs]
    runs = training_runs(MlflowClient(tracking_uri=uri))
    assert len(runs) == 2 and len({r.data.tags["sweep_id"] for r in runs}) == 2
    checkpoints = [Path(r.data.tags["checkpoint"]) for r in runs]
    assert checkpoints[0] != checkpoints[1]
    for run, path in zip(runs, checkpoints, strict=True):
        assert checkpoint.load_checkpoint(path)["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["sweep_id"] in str(path).replace("\\", "/")
