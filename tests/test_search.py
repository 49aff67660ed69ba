"""hydra/sweeper=optuna: real searches on MNIST through the CLI, read back from Optuna's storage
and MLflow; the search space syntax and the study summary in process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import DATA_ROOT, run_cli, sqlite_uri
from hydra_plugins.mnist_bench_optuna.optuna_sweeper import OptunaSweeperConf
from mnist_bench import cli
from mnist_bench import study as studies
from mnist_bench.cli import UserError
from mnist_bench.search import run_search
from mnist_bench.search_space import parse_search_space

TINY = ["model=mlp", "trainer.epochs=2", "data.max_train_samples=2000", "data.val_size=1000",
        "tracking.log_model=false"]
SEARCH = ["--multirun", "hydra/sweeper=optuna", *TINY]


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    space = parse_search_space([
        "optimizer.lr=tag(log, interval(1e-5, 1e-1))", "trainer.batch_size=choice(32,64,128,256)",
        "optimizer=choice(adam,adamw,sgd)", "model.activation=choice(sigmoid,relu)",
        "trainer.epochs=int(interval(1, 8))", "trainer.seed=range(0,10,3)", "model=lenet"])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert d["trainer.batch_size"] == CategoricalDistribution((32, 64, 128, 256))
    assert d["optimizer"] == CategoricalDistribution(("adam", "adamw", "sgd"))
    assert d["model.activation"] == CategoricalDistribution(("sigmoid", "relu"))
    assert d["trainer.epochs"] == IntDistribution(1, 8)
    assert d["trainer.seed"] == CategoricalDistribution((0, 3, 6, 9))
    assert space.fixed == ["model=lenet"]
    assert space.trial_overrides({"optimizer.lr": 0.01}) == ["model=lenet", "optimizer.lr=0.01"]


def test_the_command_line_wins_over_params_and_bad_spaces_are_one_line():
    space = parse_search_space(["optimizer.lr=choice(0.1,0.2)", "trainer.seed=0",
                                "optimizer.lr=0.5", "trainer.seed=choice(1,2)"])
    assert space.fixed == ["optimizer.lr=0.5"]
    assert space.distributions == {"trainer.seed": CategoricalDistribution((1, 2))}
    for bad, why in [(["trainer.epochs=3"], "nothing to search"),
                     (["optimizer.lr=tag(log, interval(0, 1))"], "low bound > 0"),
                     (["optimizer.lr=choice(0.1,"], "cannot read")]:
        with pytest.raises(UserError, match=why):
            parse_search_space(bad)
    with pytest.raises(UserError, match="interval"):
        parse_search_space(["optimizer.lr=interval(0.1, 1)"]).grid()


def test_the_best_configuration_is_an_experiment_hydra_can_compose(tmp_path):
    text = studies.experiment_yaml(["optimizer=sgd", "optimizer.lr=0.03", "model=lenet",
                                    "model.activation=relu", "trainer.batch_size=128"], "best")
    conf = yaml.safe_load(text)
    assert conf["defaults"] == [{"override /optimizer": "sgd"}, {"override /model": "lenet"}]
    assert conf["optimizer"]["lr"] == 0.03 and conf["model"]["activation"] == "relu"
    assert text.startswith("# @package _global_")
    # and Hydra composes it as +experiment=best
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "best.yaml").write_text(text)
    from hydra import compose, initialize_config_dir

    from mnist_bench.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]",
                                           "+experiment=best"])
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.model.name, cfg.model.activation,
            cfg.trainer.batch_size) == ("sgd", 0.03, "lenet", "relu", 128)


def load(folder) -> optuna.Study:
    storage = studies.open_storage(f"sqlite:///{folder / 'optuna.db'}")
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(folder, study: optuna.Study) -> tuple[list, list]:
    """The study's parent runs and its trials' runs in the folder's MLflow store."""
    client = MlflowClient(tracking_uri=sqlite_uri(folder))
    runs = client.search_runs(["0", "1"], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_type") == studies.STUDY]
    children = [r for r in runs if r.data.tags.get("optuna_study") == study.study_name
                and r.data.tags.get("run_type") != studies.STUDY]
    return parents, children


def check_trials_match_runs(folder, study: optuna.Study) -> dict[int, object]:
    """Every trial has exactly one child run of the study's one parent run, and no run is left
    RUNNING; returns the runs by trial number."""
    parents, children = trial_runs(folder, study)
    assert len(parents) == 1
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in children}
    assert len(by_trial) == len(children) == len(study.trials)
    assert sorted(by_trial) == [t.number for t in study.trials]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status != "RUNNING" for r in [*children, *parents])
    for trial in study.trials:
        assert trial.user_attrs[studies.TRIAL_RUN] == by_trial[trial.number].info.run_id
    return by_trial


@pytest.fixture(scope="module")
def graded_search(tmp_path_factory, data_root):
    """A grid of three learning rates: one learns, one stays at chance and is pruned by a 50 %
    threshold after its first epoch, one turns the loss into NaN."""
    folder = tmp_path_factory.mktemp("search")
    proc = run_cli([*SEARCH, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.pruner=threshold", "hydra.sweeper.prune_threshold=0.5",
                    "hydra.sweeper.n_warmup_steps=0",
                    "optimizer.lr=choice(0.003,0.0000001,1e38)"], cwd=folder)
    return folder, proc


@pytest.mark.slow
def test_pruned_and_nan_trials_are_recorded_and_the_search_goes_on(graded_search):
    folder, proc = graded_search
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    study = load(folder)
    runs = check_trials_match_runs(folder, study)
    by_lr = {t.params["optimizer.lr"]: t for t in study.trials}
    good, chance, nan = by_lr[0.003], by_lr[1e-7], by_lr[1e38]
    assert good.state == TrialState.COMPLETE and good.value > 0.5
    assert runs[good.number].info.status == "FINISHED"
    assert chance.state == TrialState.PRUNED and chance.user_attrs[studies.PRUNED_AT] == 1
    pruned_run = runs[chance.number]
    assert pruned_run.info.status == "FINISHED"
    assert pruned_run.data.tags["pruned"] == "true"
    assert pruned_run.data.tags["pruned_at_epoch"] == "1"
    assert nan.state == TrialState.FAIL and "loss=nan" in nan.user_attrs["job_failed"]
    assert runs[nan.number].info.status == "FAILED"
    assert runs[nan.number].data.tags["diverged"] == "true"
    assert study.best_trial.number == good.number


@pytest.mark.slow
def test_the_study_run_holds_the_best_trial_plots_and_a_ready_to_run_config(graded_search):
    folder, _ = graded_search
    study = load(folder)
    client = MlflowClient(tracking_uri=sqlite_uri(folder))
    (parent,), _ = trial_runs(folder, study)
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    assert (metrics["complete"], metrics["pruned"], metrics["failed"]) == (1, 1, 1)
    assert metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.optimizer.lr"] == "0.003"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    for name in ("optimization_history.png", "param_importances.png",
                 "parallel_coordinate.png", "slice.png", "best_overrides.txt",
                 "best_experiment.yaml", "trials.md"):
        assert f"study/{name}" in artifacts
    (line,) = (folder / "multirun").glob("*/*/study/best_overrides.txt")
    assert "optimizer.lr=0.003" in line.read_text() and "model=mlp" in line.read_text()
    summary = run_cli(["--storage", f"sqlite:///{folder / 'optuna.db'}"], cwd=folder,
                      module="mnist_bench.study")
    assert summary.returncode == 0, summary.stderr
    assert "1 complete, 1 pruned, 1 failed" in summary.stdout


SAMPLED = [*SEARCH, "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
           "optimizer.lr=tag(log, interval(0.0005, 0.01))"]


@pytest.mark.slow
def test_running_the_command_again_continues_the_study(tmp_path, data_root):
    first = run_cli([*SAMPLED, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "created" in first.stdout
    second = run_cli([*SAMPLED, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continued" in second.stdout
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    check_trials_match_runs(tmp_path, study)


def second_trial_has_a_run(folder) -> bool:
    if not (folder / "optuna.db").is_file():
        return False
    with contextlib.suppress(Exception):  # the study or its tables may not exist yet
        trials = load(folder).trials
        return len(trials) > 1 and studies.TRIAL_RUN in trials[1].user_attrs
    return False


def start_search(folder, n_trials: int) -> subprocess.Popen:
    env = {**os.environ, "MNIST_DATA_ROOT": str(DATA_ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "mnist_bench", *SAMPLED,
                             f"hydra.sweeper.n_trials={n_trials}"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_at_once_share_one_study(tmp_path, data_root):
    workers = [start_search(tmp_path, 6) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    study = load(tmp_path)
    # a worker asks for a trial only while fewer than n_trials are finished or running: two
    # that ask at the same moment may run one more between them
    assert 6 <= len(study.trials) <= 7
    # nothing lost: every trial finished (the median pruner may stop some after 5 trials)
    states = [t.state for t in study.trials]
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    runs = check_trials_match_runs(tmp_path, study)
    # both workers ran trials of the study, in their own sweep folders
    assert len({r.data.tags["sweep_id"] for r in runs.values()}) == 2


@pytest.mark.slow
def test_an_interrupted_search_ends_killed_and_the_next_run_finishes_it(tmp_path, data_root):
    worker = start_search(tmp_path, 3)
    deadline = time.monotonic() + 120
    while not second_trial_has_a_run(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    study = load(tmp_path)
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and studies.JOB_FAILED not in interrupted[0].user_attrs
    (parent,), _ = trial_runs(tmp_path, study)
    assert parent.info.status == "KILLED"
    again = run_cli([*SAMPLED, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(tmp_path)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    check_trials_match_runs(tmp_path, study)
    (parent,), _ = trial_runs(tmp_path, study)
    assert parent.info.status == "FINISHED"


def test_the_same_search_names_the_same_study_on_any_store_or_device():
    from mnist_bench.search import default_study_name

    base = ["optimizer.lr=tag(log, interval(1e-4, 1e-1))", "trainer.epochs=3"]
    name = default_study_name("mnist_bench", parse_search_space(base))
    elsewhere = parse_search_space([*base, "tracking.uri=http://127.0.0.1:5000",
                                    "device.num_threads=1", "data.root=/data"])
    assert default_study_name("mnist_bench", elsewhere) == name
    assert default_study_name("mnist_bench", parse_search_space(base[:1])) != name
    assert default_study_name("other", parse_search_space(base)) != name


@pytest.mark.slow
def test_a_search_runs_its_trials_in_parallel_through_joblib(tmp_path, data_root):
    proc = run_cli([*SAMPLED, "hydra.sweeper.n_trials=4", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    runs = check_trials_match_runs(tmp_path, study)
    # two rounds of two trials, each job in a worker process of its own with one thread
    assert proc.stdout.count("is launching 2 jobs") == 2
    assert {r.data.tags["torch_threads"] for r in runs.values()} == {"1"}


def search_interrupted_at_start(folder, store: str, monkeypatch) -> list[tuple[str, str]]:
    """Run a search in process whose Ctrl-C comes just as its study's MLflow run is created (the
    run exists, no trial has started); the (run_type, status) of the runs in its store."""
    monkeypatch.chdir(folder)
    settings = OmegaConf.structured(OptunaSweeperConf(n_trials=2, params={
        "optimizer.lr": "tag(log, interval(0.0001, 0.1))"}))
    config = OmegaConf.create({
        "tracking": {"uri": store, "experiment": "mnist_bench"},
        "hydra": {"sweep": {"dir": str(folder / "multirun")},
                  "launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher."
                                            "joblib_launcher.JoblibLauncher", "n_jobs": 2}}})
    create_run = MlflowClient.create_run

    def create_then_interrupt(self, *args, **kwargs):
        run = create_run(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return run

    monkeypatch.setattr(MlflowClient, "create_run", create_then_interrupt)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Ctrl-C raises KeyboardInterrupt, also when pytest was started with SIGINT ignored (a
    # shell's background job), which handle_interrupts would rightly leave ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli.handle_interrupts()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_search(settings, config, launcher=None, arguments=[], validate=None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    runs = MlflowClient(store).search_runs(["0", "1"])
    return [(r.data.tags["run_type"], r.info.status) for r in runs]


def test_a_signal_while_the_study_run_is_created_ends_that_run_killed(tmp_path, store,
                                                                      monkeypatch):
    """Ended KILLED, not left RUNNING with nothing left to end it."""
    assert search_interrupted_at_start(tmp_path, store, monkeypatch) == [("study", "KILLED")]


def test_the_study_run_ends_even_when_its_summary_cannot_be_written(tmp_path, store,
                                                                    monkeypatch):
    def no_space_left(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(studies, "write_summary", no_space_left)
    assert search_interrupted_at_start(tmp_path, store, monkeypatch) == [("study", "KILLED")]
