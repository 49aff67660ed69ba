"""A small real sweep on real data, then the report command, read back through MLflow."""

import csv
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import scipy.stats
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import SMALL_SWEEP, compose_job, run_cli, run_in_process, sqlite_uri
from mnist_bench import checkpoint, plots, register, report, report_tables, runs


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def training_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("mnist_bench")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("run_type") not in ("report", "sweep")]


def parent_run(client: MlflowClient):
    experiment = client.get_experiment_by_name("mnist_bench")
    [parent] = client.search_runs([experiment.experiment_id], "tags.run_type = 'sweep'")
    return parent


@pytest.mark.slow
def test_the_sweep_is_one_parent_run_holding_its_jobs_and_report(sweep):
    _, client, _ = sweep
    parent, children = parent_run(client), training_runs(client)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep_id"] == children[0].data.tags["sweep_id"]
    assert "model=mlp,lenet optimizer.lr=0.01,0.001" in parent.data.tags["hydra_overrides"]
    assert parent.data.metrics == {"jobs": 4, "finished": 4, "failed": 0, "diverged": 0,
                                   "killed": 0, "running": 0}
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/index.md", "report/table4_best.csv", "report/table_lenet.csv"} <= files
    for child in children:  # named by what differs first
        lr = float(child.data.params["optimizer.lr"])
        assert child.info.run_name.startswith(f"{child.data.tags['model']} lr={lr:g} seed=42 ")


@pytest.mark.slow
def test_sweep_jobs_share_one_sweep_id_and_output_folders(sweep):
    cwd, client, _ = sweep
    runs = training_runs(client)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert sorted((r.data.tags["model"], float(r.data.params["optimizer.lr"])) for r in runs) == [
        ("lenet", 0.001), ("lenet", 0.01), ("mlp", 0.001), ("mlp", 0.01)]
    job_dirs = sorted(p.name for p in (cwd / "multirun").glob("*/*/*") if p.is_dir())
    assert job_dirs == ["0", "1", "2", "3"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_is_logged_as_a_tagged_run(sweep):
    _, client, proc = sweep
    run_id = re.search(r"MLflow run (\w+)", proc.stdout).group(1)
    run = client.get_run(run_id)
    assert run.data.tags["run_type"] == "report"
    files = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/index.md", "report/table4_best.csv", "report/table_mlp.md"} <= files


@pytest.mark.parametrize("command", [report.main, register.main, runs.main],
                         ids=["report", "register", "runs"])
def test_a_reading_command_without_a_store_says_so_and_creates_none(tmp_path, capsys,
                                                                     command):
    assert command(["--tracking-uri", sqlite_uri(tmp_path)]) == 2
    assert f"no MLflow store at {sqlite_uri(tmp_path)}: run this in the folder" in \
        capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # MLflow would have created an empty one


def test_report_without_runs_is_a_clear_error(tmp_path, store_template, capsys):
    shutil.copy(store_template, tmp_path / "mlflow.db")  # a store, but no experiment
    assert report.main(["--tracking-uri", sqlite_uri(tmp_path)]) == 2
    assert "experiment 'mnist_bench' does not exist" in capsys.readouterr().err


@pytest.mark.slow
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
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "a job of the sweep failed (training diverged at epoch 1" in proc.stderr
    runs = {float(r.data.params["optimizer.lr"]): r for r in
            training_runs(MlflowClient(tracking_uri=uri))}
    parent = parent_run(MlflowClient(tracking_uri=uri))
    assert parent.info.status == "FAILED"  # although Hydra skips its end-of-sweep callback
    assert (parent.data.metrics["finished"], parent.data.metrics["diverged"]) == (1, 1)
    assert runs[0.05].info.status == "FINISHED"
    assert runs[1e12].info.status == "FAILED" and runs[1e12].data.tags["diverged"] == "true"
    report = run_cli(["--tracking-uri", uri, "--out", str(tmp_path / "report")], cwd=tmp_path,
                     module="mnist_bench.report")
    assert report.returncode == 0, report.stderr
    rows = {float(r["lr"]): r for r in read_csv(tmp_path / "report" / "table_mlp.csv")}
    assert rows[1e12]["outcome"] == "diverged" and rows[0.05]["outcome"] == "ok"
    assert "diverged" in (tmp_path / "report" / "table_mlp.md").read_text()


def test_runs_that_share_a_learning_rate_form_one_curve_of_all_of_them():
    """Seeds (or ``--all-runs`` over two sweeps): both MLP runs at lr 0.01 feed one line (their
    mean, in a band), and neither is dropped."""
    runs = pd.DataFrame({"model": ["mlp", "mlp", "mlp"], "lr": [0.01, 0.01, 0.001],
                         "run_id": ["aaaaaaa111", "bbbbbbb222", "ccccccc333"],
                         "outcome": "ok", "val_acc": 0.9})
    curves = {run_id: [{"val_acc": float(i)}] for i, run_id in enumerate(runs["run_id"])}
    [(title, by_label)] = report_tables.curves_by_model(runs, curves).items()
    assert by_label == {"lr=0.01 (2 runs)": [[{"val_acc": 0.0}], [{"val_acc": 1.0}]],
                        "lr=0.001": [[{"val_acc": 2.0}]]}


def test_figures_of_an_epoch_variant_carry_the_networks_title_like_its_table():
    runs = pd.DataFrame({"model": ["lenet", "lenet (25 epochs)"], "base_model": ["lenet"] * 2,
                         "epochs": [10, 25], "lr": [0.0002] * 2, "run_id": ["a1", "b2"],
                         "outcome": "ok", "val_acc": 0.9})
    curves = {"a1": [{"val_acc": 0.9}], "b2": [{"val_acc": 0.95}]}
    assert list(report_tables.curves_by_model(runs, curves)) == ["LeNet-5", "LeNet-5, 25 epochs"]
    assert report_tables.section_title(runs, "lenet (25 epochs)") == \
        "LeNet-5, 25 epochs: learning rates"


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


# ------------------------------------------------------------------ seeds -----------------

def constructed_runs(cells: dict[float, list[float]], model: str = "lenet") -> pd.DataFrame:
    """Runs with the given final validation accuracies per learning rate; finished, except
    where an accuracy is NaN: that run diverged."""
    rows = [{"run_id": f"{lr}-{i}", "model": model, "lr": lr,
             "outcome": "diverged" if math.isnan(acc) else "ok", "val_acc": acc,
             "train_acc": acc, "test_acc": acc, "train_time_s": 10.0 + i, "test_loss": 0.1}
            for lr, accs in cells.items() for i, acc in enumerate(accs)]
    return pd.DataFrame(rows)


def test_a_cell_whose_seeds_split_is_shown_as_bimodal_not_averaged():
    runs = constructed_runs({0.01: [0.976, 0.987, 0.101, 0.114], 0.0002: [0.93, 0.94, 0.935]})
    table = report_tables.lr_table(runs, "lenet", report_tables.published())
    cell = table.set_index("lr").loc[0.01]
    assert cell["bimodal"] and (cell["learned"], cell["at_chance"]) == (2, 2)
    text = report_tables._markdown(table)
    assert "bimodal: 2 learned (98.15), 2 at chance (10.75)" in text
    assert "54.4" not in text  # the mean of all four describes none of them
    assert not table.set_index("lr").loc[0.0002, "bimodal"]


def test_table4_says_whether_the_runner_up_is_within_the_interval():
    tied = constructed_runs({0.01: [0.980, 0.984, 0.976], 0.001: [0.979, 0.981, 0.975]})
    clear = constructed_runs({0.01: [0.980, 0.981, 0.982], 0.001: [0.90, 0.91, 0.92]})
    paper = report_tables.published()
    assert report_tables.best_table(tied, paper).loc[0, "verdict"] == "tied with lr=0.001"
    best = report_tables.best_table(clear, paper).loc[0]
    assert (best["lr"], best["verdict"]) == (0.01, "best")
    assert best["train_time_s"] == pytest.approx(11.0) and best["train_time_s_sd"] == 1.0


def test_googlenet_stands_beside_the_published_lenet_rows_in_every_table():
    """The report's "LeNet" numbers are compared with GoogLeNet's in the learning-rate table,
    so its Table 4 row must face the same published network's row, not none."""
    runs = constructed_runs({0.01: [0.98, 0.99], 0.0002: [0.97, 0.975]}, model="googlenet")
    paper = report_tables.published()
    lenet_row = paper[(paper["table"] == 4) & (paper["model"] == "lenet")].iloc[0]
    best = report_tables.best_table(runs, paper).iloc[0]
    assert best["paper_val_acc"] == lenet_row["val_acc"] == 0.987
    assert best["paper_test_loss"] == lenet_row["loss"]
    table2 = paper[(paper["table"] == 2) & (paper["lr"] == 0.01)].iloc[0]
    assert report_tables.lr_table(runs, "googlenet", paper).set_index("lr").loc[
        0.01, "paper_val_acc"] == table2["val_acc"]


NAN = math.nan


@pytest.mark.parametrize("seeds", [True, False], ids=["seeds", "one run per cell"])
def test_table4_counts_failed_runs_and_keeps_a_model_whose_runs_all_failed(seeds):
    mlp = constructed_runs({0.01: [0.97, 0.96, NAN] if seeds else [0.97], 0.02: [NAN]}, "mlp")
    lenet = constructed_runs({0.01: [NAN, NAN] if seeds else [NAN]}, "lenet")
    table = report_tables.best_table(pd.concat([mlp, lenet]),
                                     report_tables.published()).set_index("model")
    assert table.loc["mlp", "lr"] == 0.01
    if seeds:
        assert (table.loc["mlp", "runs"], table.loc["mlp", "outcome"]) == (3, "2 ok, 1 diverged")
    assert table.loc["lenet", "outcome"] == ("2 diverged" if seeds else "diverged")
    assert "diverged" in report_tables._markdown(table.reset_index())


def test_table4_keeps_a_model_whose_only_finished_run_has_no_validation_accuracy():
    runs = pd.concat([constructed_runs({0.01: [0.95]}, "mlp"),
                      constructed_runs({0.01: [0.97]}, "lenet").assign(val_acc=NAN)])
    table = report_tables.best_table(runs, report_tables.published()).set_index("model")
    assert table.loc["mlp", "val_acc"] == 0.95 and table.loc["lenet", "lr"] == 0.01


def test_a_single_run_inside_the_runner_ups_interval_is_tied_not_best():
    runs = constructed_runs({0.01: [0.9721], 0.001: [0.970, 0.972, 0.974, 0.971, 0.973]})
    best = report_tables.best_table(runs, report_tables.published()).loc[0]
    assert best["verdict"] == "tied with lr=0.001"


def test_a_bimodal_cell_keeps_its_published_value_and_counts_runs_in_between():
    runs = constructed_runs({0.01: [0.98, 0.98, 0.35, 0.11], 0.0002: [0.93, 0.94]})
    text = report_tables._markdown(report_tables.lr_table(runs, "lenet", report_tables.published()))
    assert "bimodal: 2 learned (98.00), 1 at chance (11.00), 1 in between (35.00)" in text
    assert "(91.7)" in text  # the published validation accuracy of Table 2 at lr 0.01


def test_no_published_value_means_no_verdict_on_it():
    row = report_tables.lr_table(constructed_runs({0.005: [0.95, 0.96]}), "lenet",
                          report_tables.published()).iloc[0]
    assert pd.isna(row["paper_val_acc"]) and pd.isna(row["paper_in_ci_val_acc"])


def test_curves_leave_out_failed_runs_and_split_a_bimodal_cell():
    runs = constructed_runs({0.01: [0.97, 0.96, NAN], 0.0002: [0.98, 0.97, 0.11],
                             0.02: [NAN, NAN]}, "lenet")
    curves = {r: [{"val_acc": 0.5}] * 10 for r in runs["run_id"]}
    curves["0.01-2"] = [{"val_acc": 0.5}]  # diverged in its first epoch
    [(_, groups)] = report_tables.curves_by_model(runs, curves).items()
    assert {label: len(h) for label, h in groups.items()} == {
        "lr=0.01 (2 runs)": 2, "lr=0.0002 learned (2 runs)": 2, "lr=0.0002 at chance": 1,
        "lr=0.02 diverged (2 runs)": 2}


def test_a_run_that_stopped_early_does_not_cut_the_others_curves():
    full = [{"val_acc": 0.1 * epoch} for epoch in range(1, 11)]
    fig = plots.plot_curves({"lr=0.01 (2 runs)": [full, full[:3]]}, ("val_acc",))
    mean_line = fig.axes[0].lines[0]
    assert list(mean_line.get_xdata()) == list(range(1, 11))
    assert mean_line.get_ydata()[-1] == pytest.approx(1.0)


def test_epochs_are_ticked_as_whole_numbers_also_for_a_single_epoch():
    for epochs in (1, 10):
        history = [{"val_acc": 0.9}] * epochs
        ax = plots.plot_curves({"lr=0.01": [history]}, ("val_acc",)).axes[0]
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert 1 in shown and all(t == int(t) for t in shown), (epochs, shown)
        plots.plt.close(ax.figure)


def test_a_bimodal_cells_groups_share_their_learning_rates_colour():
    history = [{"val_acc": 0.5}] * 3
    fig = plots.plot_curves({"lr=0.01 learned (2 runs)": [history] * 2,
                             "lr=0.01 at chance": [history], "lr=0.001": [history]},
                            ("val_acc",))
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    learned, chance, other = (lines[k] for k in ("lr=0.01 learned (2 runs)",
                                                  "lr=0.01 at chance", "lr=0.001"))
    assert learned.get_color() == chance.get_color() != other.get_color()
    assert (learned.get_linestyle(), chance.get_linestyle()) == ("-", "--")


def test_a_selection_of_other_than_10_epochs_says_so_beside_the_published_table():
    runs = constructed_runs({0.0002: [0.96, 0.97]}).assign(epochs=25, base_model="lenet")
    assert report_tables.section_title(runs, "lenet") == \
        "LeNet-5: learning rates (25 epochs; report Table 2: 10 epochs)"


def test_a_run_still_starting_without_parameters_is_skipped_with_a_word(tmp_path, store,
                                                                         capsys):
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("mnist_bench")
    finished = client.create_run(experiment, tags={"model": "mlp", "sweep_id": "s"})
    for key, value in {"trainer.epochs": "10", "optimizer.lr": "0.01"}.items():
        client.log_param(finished.info.run_id, key, value)
    for metric in ("train_acc", "val_acc", "test_acc"):
        client.log_metric(finished.info.run_id, metric, 0.97)
    client.set_terminated(finished.info.run_id)
    client.create_run(experiment, tags={"model": "mlp", "sweep_id": "s"})  # no params yet
    mlflow.set_tracking_uri(store)
    runs = report_tables.load_runs("mnist_bench", "s")
    assert runs["run_id"].tolist() == [finished.info.run_id]
    assert "1 run without parameters" in capsys.readouterr().err


def test_a_pruned_trial_is_not_counted_as_a_finished_run():
    """Optuna's pruned trials end FINISHED with a ``pruned`` tag after a few epochs: their
    accuracies are no 10-epoch result."""
    pruned = pd.Series({"status": "FINISHED", "tags.pruned": "true", "tags.diverged": None})
    assert report_tables._outcome(pruned) == "pruned"


def test_a_cell_whose_runs_differ_in_more_than_their_seed_is_named(tmp_path, monkeypatch):
    """Statistics over a cell treat its runs as repeats; runs of another batch size are not."""
    runs = constructed_runs({0.01: [0.97, 0.96, 0.95], 0.001: [0.93, 0.94]}, "mlp").assign(
        **{"params.trainer.batch_size": ["64", "64", "128", "64", "64"],
           "params.trainer.seed": ["0", "1", "2", "0", "1"],
           "params.device.num_threads": ["2", "1", "1", "1", "1"], "epochs": 10})
    assert report_tables.mixed_settings(runs) == [
        "mlp lr=0.01: its 3 runs differ in trainer.batch_size, not only in their seed"]
    monkeypatch.setattr(report_tables, "histories", lambda client, run_ids: {
        r: [{"val_acc": 0.9}] for r in run_ids})
    index = report_tables.build_report(runs, tmp_path, "constructed").read_text()
    assert "differ in trainer.batch_size" in index
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", index)
    assert "train_time_best.png" in figures and all((tmp_path / f).is_file() for f in figures)


@pytest.mark.parametrize("seeds", [[0.95, 0.96], [0.95]], ids=["seeds", "one run"])
def test_a_metric_that_finished_runs_did_not_log_says_so(seeds):
    runs = constructed_runs({0.01: seeds}, "mlp").assign(test_acc=NAN)
    text = report_tables._markdown(report_tables.lr_table(runs, "mlp", report_tables.published()))
    assert "not logged" in text and "nan" not in text


def test_a_report_of_runs_that_all_failed_is_refused_before_writing_anything(tmp_path):
    runs = constructed_runs({0.02: [NAN, NAN]}, "mlp")
    with pytest.raises(report_tables.ReportError, match="every selected run"):
        report_tables.build_report(runs, tmp_path / "report", "constructed")
    assert not (tmp_path / "report").exists()


def test_an_accuracy_interval_stops_at_100_percent():
    """Two seeds far apart: Student's t interval of the mean would reach past 100 %, which no
    accuracy can; the table shows it cut at the possible range."""
    runs = constructed_runs({0.02: [0.9728, 0.9839]})
    row = report_tables.lr_table(runs, "lenet", report_tables.published()).iloc[0]
    t_high = scipy.stats.t.interval(0.95, 1, loc=0.97835, scale=statistics.stdev(
        [0.9728, 0.9839]) / math.sqrt(2))[1]
    assert t_high > 1 and row["test_acc_ci_high"] == 1.0
    assert row["test_acc_ci_low"] == pytest.approx(2 * 0.97835 - t_high)
    table = report_tables.lr_table(runs, "lenet", report_tables.published())
    assert "100.00]" in report_tables._markdown(table)


def test_seed_sweep_statistics_match_an_independent_computation(tmp_path, data_root):
    """A real sweep of 2 learning rates x 3 seeds; mean, sd and the t interval recomputed
    from the runs read back through MLflow."""
    uri = sqlite_uri(tmp_path)
    for lr in (0.01, 0.0005):
        for seed in (0, 1, 2):
            run_in_process(["model=mlp", "trainer.epochs=1", "data.max_train_samples=500",
                            "data.val_size=500", "tracking.log_model=false", f"trainer.seed={seed}",
                            f"optimizer.lr={lr}", "tracking.sweep_id=seeds", f"tracking.uri={uri}"],
                           tmp_path)
    assert report.main(["--tracking-uri", uri, "--out", str(tmp_path / "report"),
                        "--no-log"]) == 0
    rows = {float(r["lr"]): r for r in read_csv(tmp_path / "report" / "table_mlp.csv")}
    for lr, row in rows.items():
        values = [r.data.metrics["test_acc"] for r in training_runs(MlflowClient(uri))
                  if float(r.data.params["optimizer.lr"]) == lr]
        assert len(values) == int(row["runs"]) == 3
        mean, sd = statistics.mean(values), statistics.stdev(values)
        low, high = scipy.stats.t.interval(0.95, 2, loc=mean, scale=sd / math.sqrt(3))
        assert float(row["test_acc"]) == pytest.approx(mean)
        assert float(row["test_acc_sd"]) == pytest.approx(sd)
        assert (float(row["test_acc_ci_low"]), float(row["test_acc_ci_high"])) == \
            pytest.approx((low, high))
        assert float(row["test_acc_min"]) == min(values)
    index = (tmp_path / "report" / "index.md").read_text()
    assert "Student's t" in index
    assert re.search(r"\| 0\.01\s+\|\s+3 \| ok\s+\| \d+\.\d\d ± \d+\.\d\d \[", index), index


def test_table4_shows_the_sweep_and_the_25_epoch_protocol_each_beside_the_published_row(
        tmp_path, data_root):
    """Two sweeps reported together: runs of another epoch count get rows of their own."""
    uri = sqlite_uri(tmp_path)
    for sweep_id, epochs, lrs in (("grid", 1, (0.01, 0.001)), ("protocol", 2, (0.0002,))):
        for lr in lrs:
            run_in_process(["model=mlp", f"trainer.epochs={epochs}", "data.max_train_samples=500",
                            "data.val_size=500", "tracking.log_model=false", f"optimizer.lr={lr}",
                            f"tracking.sweep_id={sweep_id}", f"tracking.uri={uri}"], tmp_path)
    assert report.main(["--tracking-uri", uri, "--sweep-id", "grid", "--sweep-id", "protocol",
                        "--out", str(tmp_path / "report"), "--no-log"]) == 0
    rows = {r["model"]: r for r in read_csv(tmp_path / "report" / "table4_best.csv")}
    assert set(rows) == {"mlp (1 epochs)", "mlp (2 epochs)"}
    assert float(rows["mlp (2 epochs)"]["lr"]) == 0.0002
    paper_mlp = report_tables.published().query("table == 4 and model == 'mlp'").iloc[0]
    for row in rows.values():
        assert float(row["paper_test_acc"]) == paper_mlp["test_acc"]
    assert (tmp_path / "report" / "table_mlp_2_epochs.md").is_file()
