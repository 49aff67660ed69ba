"""Scaling out: CPU threads shared among parallel jobs, the SLURM preset, a real submitit_local
sweep, and a real team server (PostgreSQL + ``mlflow server`` with proxied artifacts) taking a
parallel joblib sweep that the report and t-SNE then read back (the last two are ``slow``)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient

from conftest import compose_job, free_port, run_cli, run_in_process, sqlite_uri
from mnist_bench import job
from mnist_bench.cli import CONF_DIR
from mnist_bench.team_server import TeamServer, start, stop

SMALL = ["trainer.epochs=2", "data.max_train_samples=2000", "data.val_size=1000"]
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("launcher", "expected"), [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], lambda cores: max(1, cores // 2)),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], lambda cores: 1),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], lambda cores: cores),
    (["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=3"], lambda cores: 3),
    ([], lambda cores: None),  # one job at a time: torch's default
], ids=["joblib-2", "joblib-all", "joblib-1", "submitit-cpus", "basic"])
def test_each_launcher_implies_the_threads_of_a_job(tmp_path, launcher, expected):
    HydraConfig.instance().set_config(compose_job(launcher, tmp_path))
    assert job.launcher_threads() == expected(os.cpu_count())


def test_parallel_jobs_record_and_use_their_share_of_the_cores(tmp_path, data_root,
                                                              threads_restored):
    args = ["model=mlp", "trainer.epochs=1", "data.max_train_samples=500",
            "tracking.log_model=false", f"tracking.uri={sqlite_uri(tmp_path)}",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    job_run = run_in_process(args, tmp_path)
    run = MlflowClient(tracking_uri=sqlite_uri(tmp_path)).get_run(job_run.run_id)
    assert run.data.tags["torch_threads"] == str(max(1, os.cpu_count() // 2))
    explicit = run_in_process([*args, "device.num_threads=3"], tmp_path)  # an explicit value wins
    run = MlflowClient(tracking_uri=sqlite_uri(tmp_path)).get_run(explicit.run_id)
    assert run.data.tags["torch_threads"] == "3"


def test_the_slurm_preset_composes_into_submitits_slurm_launcher():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                 "hydra.launcher.timeout_min=30"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 30, 1)
    assert launcher.cpus_per_task >= 1 and launcher.array_parallelism >= 1


def check_runs(client: MlflowClient, n_runs: int, epochs: int) -> list:
    """The jobs' runs, each checked; and their sweep's parent run, with their outcome."""
    experiment = client.get_experiment_by_name("mnist_bench").experiment_id
    [parent] = client.search_runs([experiment], "tags.run_type = 'sweep'")
    runs = [r for r in client.search_runs([experiment]) if r.info.run_id != parent.info.run_id]
    assert len(runs) == n_runs
    assert parent.info.status == "FINISHED" and parent.data.metrics["finished"] == n_runs
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        for key in EPOCH_KEYS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), key
        assert {"test_acc", "best_val_acc", "train_time_s"} <= run.data.metrics.keys()
        assert run.data.params["model.name"] == run.data.tags["model"]
    return runs


@pytest.mark.slow
def test_a_submitit_local_sweep_tracks_every_job(tmp_path, data_root):
    proc = run_cli(["--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                    "hydra.launcher.cpus_per_task=1", "model=mlp", "optimizer.lr=0.01,0.001",
                    "tracking.log_model=false", f"tracking.uri={sqlite_uri(tmp_path)}", *SMALL],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = check_runs(MlflowClient(tracking_uri=sqlite_uri(tmp_path)), 2, epochs=2)
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.001", "0.01"]
    assert {r.data.tags["torch_threads"] for r in runs} == {"1"}
    assert len(list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))) == 2


@pytest.fixture
def team_server():
    """A real PostgreSQL and ``mlflow server`` on loopback ports, stopped and removed after."""
    db_user = None
    if os.geteuid() == 0:  # PostgreSQL refuses root
        try:
            db_user = pwd.getpwnam("nobody").pw_name
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to run PostgreSQL")
    # below /tmp, which the database's user can reach (pytest's folders are private to root)
    folder = Path(tempfile.mkdtemp(prefix="mnist_bench_team_"))
    server = TeamServer(folder, free_port(), free_port(), db_user)
    try:
        start(server)
        yield server
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_team_server_on_postgresql_takes_a_parallel_sweep(team_server, tmp_path, data_root):
    uri = team_server.tracking_uri
    proc = run_cli(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    "model=mlp,lenet", "optimizer.lr=0.01,0.001", f"tracking.uri={uri}",
                    *SMALL], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "View run" not in proc.stdout  # stdout holds only the jobs' summaries
    client = MlflowClient(tracking_uri=uri)
    runs = check_runs(client, 4, epochs=2)
    assert {r.data.tags["torch_threads"] for r in runs} == {str(max(1, os.cpu_count() // 2))}
    artifacts = team_server.folder / "artifacts"
    for run in runs:
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "figures", "classification_report.json"} <= names
        local = client.download_artifacts(run.info.run_id, "figures/curves.png", str(tmp_path))
        assert Path(local).read_bytes().startswith(b"\x89PNG")
        # proxied: the files sit in the server's artifact folder, none in the launch folder
        assert list(artifacts.rglob(f"*{run.info.run_id}*/**/curves.png"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(runs[0].data.tags["model_uri"])
    assert model.predict(torch.rand(3, 1, 28, 28).numpy()).shape == (3, 10)

    report = run_cli(["--tracking-uri", uri, "--out", str(tmp_path / "report")], cwd=tmp_path,
                     module="mnist_bench.report")
    assert report.returncode == 0, report.stderr
    assert "report for sweep" in report.stdout and "4 runs (all finished)" in report.stdout
    assert (tmp_path / "report" / "table_lenet.md").is_file()
    tsne = run_cli(["source=features", f"model_uri={runs[0].data.tags['model_uri']}",
                    "n_samples=300", f"tracking.uri={uri}"], cwd=tmp_path,
                   module="mnist_bench.tsne")
    assert tsne.returncode == 0, tsne.stderr[-2000:]
    assert client.search_runs([client.get_experiment_by_name("mnist_bench_tsne").experiment_id])
    assert not (tmp_path / "mlflow.db").exists()


def test_stop_leaves_a_process_that_is_not_its_server_alone(tmp_path):
    """A PID file outlives its server and PIDs are reused: stop kills only its own server."""
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        server = TeamServer(tmp_path)
        server.pid_file.write_text(str(bystander.pid))
        stop(server)
        assert bystander.poll() is None and not server.pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()
