"""The MLflow UI lists, filters and compares a real sweep: a headless-Chromium browser test.

A module fixture runs a small real Hydra multirun (two MLP jobs on a subset of the real MNIST
copy) through the CLI into a temporary SQLite store, adds one run of another "sweep" as a decoy,
and starts ``mlflow server`` on 127.0.0.1 and a free port against that store. The tests open the
experiment in Debian's Chromium through Playwright, check what the README tells users to do
(list the runs, filter by the sweep tag, press Compare, look at the charts), and save a
screenshot. The server and its children are stopped in every case, failures included.

Needs: the real MNIST files ($MNIST_DATA_ROOT or ./data), Chromium at /usr/bin/chromium (install
it with ``.ci/install_chromium.sh``; ``$MNIST_BENCH_CHROMIUM`` names another binary) and the
``playwright`` Python package. Without Chromium or playwright the tests skip, saying how to get
them; CI installs Chromium first, so there they run.
Set ``$MNIST_BENCH_SCREENSHOT_DIR`` to also copy the screenshot there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow import MlflowClient

from conftest import free_port

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the `chromium` fixture skips, saying how to install it
    sync_playwright = None

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MNIST_BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI containers run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # A closed network refuses Chromium's own background connections; switch them off.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--metrics-recording-only",
]
LRS = ("0.01", "0.001")
SWEEP_OVERRIDES = [
    "model=mlp",
    f"optimizer.lr={','.join(LRS)}",
    "trainer.epochs=1",
    "data.max_train_samples=2000",
    "tracking.log_model=false",
]
DECOY_RUN_NAME = "decoy-run-of-another-sweep"
SERVER_START_TIMEOUT_S = 120  # a cold `mlflow server` takes 5-30 s on 2 busy cores
UI_TIMEOUT_MS = 30_000
SCREENSHOT_NAME = "mlflow_ui_sweep.png"
# Columns the runs table shows (stored by the UI in localStorage; unknown keys are ignored).
TABLE_COLUMNS = [
    "tags.`model`",
    "params.`optimizer.lr`",
    "metrics.`val_acc`",
    "metrics.`test_acc`",
    "tags.`sweep_id`",
]
MATCHING_RUNS = re.compile(r"^\s*\d+\s+matching runs?\s*$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UiSweep:
    url: str  # server root, e.g. http://127.0.0.1:43210
    experiment_id: str
    sweep_id: str
    sweep_run_names: list[str]  # as the MLflow client reports them
    all_run_count: int  # sweep runs + the decoy


def _tail(path: Path, n_chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-n_chars:] if path.exists() else "(no log)"


def _quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@contextmanager
def _mlflow_server(store_uri: str, artifacts: Path, port: int, log_path: Path) -> Iterator[
        subprocess.Popen]:
    """Start ``mlflow server`` on 127.0.0.1:port; always stop it and its children on exit."""
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", store_uri,
           "--default-artifact-root", str(artifacts),
           "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log_file:
        # Own session and process group: uvicorn and the job runner are children of the
        # `mlflow` process, and the whole group is stopped below.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=artifacts.parent, start_new_session=True,
                                # No background job runner (a dozen huey processes): the UI
                                # does not need it, and it triples the start-up time.
                                env=_quiet_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        yield proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left of it."""
    pgid = proc.pid  # start_new_session=True made the server the leader of its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    deadline = time.monotonic() + 5  # children (uvicorn, job runner) may outlive the leader
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_until_up(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode} before answering:\n"
                        f"{_tail(log_path)}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url}/health within {SERVER_START_TIMEOUT_S} s:\n"
                f"{_tail(log_path)}", pytrace=False)


def _data_root() -> Path:
    root = Path(os.environ.get("MNIST_DATA_ROOT") or REPO / "data")
    if not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"no MNIST copy at {root}/MNIST/raw: set MNIST_DATA_ROOT to a folder holding "
                    "MNIST/raw/ (the browser test trains a small real sweep)", pytrace=False)
    return root


def _run_sweep(tmp: Path, store_uri: str) -> None:
    # Hydra's default layout, multirun/<date>/<time>: the sweep id becomes "<date>/<time>".
    sweep_dir = tmp / "multirun" / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    cmd = [sys.executable, "-m", "mnist_bench", "--multirun", *SWEEP_OVERRIDES,
           f"tracking.uri={store_uri}", f"hydra.sweep.dir={sweep_dir}"]
    # cwd=tmp: anything written relative to the launch folder (./mlruns artifacts) stays in tmp.
    env = _quiet_env(MNIST_DATA_ROOT=str(_data_root()))
    # One intra-op thread: on a small shared CI box, OpenMP threads that spin against other
    # processes turn a 0.1 s epoch into 10 s. The runs' names and params stay the same.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    result = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"sweep failed ({result.returncode}): {' '.join(cmd)}\n"
                    f"{(result.stdout + result.stderr)[-4000:]}", pytrace=False)


@pytest.fixture(scope="module")
def chromium() -> str:
    if sync_playwright is None:
        pytest.skip("the `playwright` Python package is missing: pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium not found at {CHROMIUM}. Install Debian's chromium with "
                    "`.ci/install_chromium.sh` (runs `apt-get install -y --no-install-recommends "
                    "chromium`, with sudo when not root) or point MNIST_BENCH_CHROMIUM at a "
                    "Chromium binary. `playwright install` is not needed.")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    # launch() gives the browser a fresh temporary profile (user data dir) every time.
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def ui_sweep(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiSweep]:
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("mlflow_ui")
    store_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    artifacts = tmp / "mlartifacts"
    artifacts.mkdir()
    client = MlflowClient(tracking_uri=store_uri)
    client.search_experiments()  # creates the store's tables before two processes share it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = tmp / "mlflow_server.log"
    log.info("store ready after %.1f s", time.monotonic() - t0)
    # The server starts while the sweep trains: both take seconds, and the store is ready.
    with _mlflow_server(store_uri, artifacts, port, server_log) as proc:
        _run_sweep(tmp, store_uri)
        log.info("sweep done after %.1f s", time.monotonic() - t0)
        experiment = client.get_experiment_by_name("mnist_bench")
        assert experiment is not None, "the sweep created no 'mnist_bench' experiment"
        runs = client.search_runs([experiment.experiment_id])  # the jobs and their parent
        jobs = [run for run in runs if run.data.tags.get("run_type") != "sweep"]
        assert len(jobs) == len(LRS), f"expected {len(LRS)} jobs, found {len(jobs)}"
        assert len(runs) == len(LRS) + 1, "expected the sweep's parent run beside its jobs"
        sweep_ids = {run.data.tags.get("sweep_id") for run in runs}
        assert len(sweep_ids) == 1 and None not in sweep_ids, f"sweep ids: {sweep_ids}"
        (sweep_id,) = sweep_ids
        filtered = client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.sweep_id = '{sweep_id}'")
        assert {r.info.run_id for r in filtered} == {r.info.run_id for r in runs}
        decoy = client.create_run(experiment.experiment_id, run_name=DECOY_RUN_NAME,
                                  tags={"sweep_id": "another/sweep", "model": "mlp"})
        client.log_metric(decoy.info.run_id, "val_acc", 0.5)
        client.set_terminated(decoy.info.run_id)
        all_run_count = len(client.search_runs([experiment.experiment_id]))
        assert all_run_count == len(runs) + 1
        _wait_until_up(proc, url, server_log)
        log.info("mlflow server up after %.1f s: %s", time.monotonic() - t0, url)
        yield UiSweep(url=url, experiment_id=experiment.experiment_id, sweep_id=sweep_id,
                      sweep_run_names=sorted(r.info.run_name for r in runs),
                      all_run_count=all_run_count)
    assert proc.poll() is not None, "mlflow server still running after teardown"


@pytest.fixture
def page(browser: Browser, ui_sweep: UiSweep) -> Iterator[Page]:
    """A fresh browser context (own localStorage) with the UI's side panels closed."""
    state = {"selectedColumns": TABLE_COLUMNS}
    storage = {
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        f'MLflowLocalStorage-1.1-ExperimentPage-["{ui_sweep.experiment_id}"]'
        "-ReactComponentState": json.dumps(state),
    }
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    context.add_init_script("".join(f"window.localStorage.setItem({json.dumps(k)}, "
                                    f"{json.dumps(v)});" for k, v in storage.items()))
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _runs_url(ui: UiSweep, **params: str) -> str:
    # workflowType=machine_learning: the "Model training" view (MLflow 3 opens GenAI otherwise).
    query = "&".join(f"{k}={quote(v, safe='')}"
                     for k, v in {"workflowType": "machine_learning", **params}.items())
    return f"{ui.url}/#/experiments/{ui.experiment_id}/runs?{query}"


def _sweep_filter(ui: UiSweep) -> str:
    return f"tags.sweep_id = '{ui.sweep_id}'"


def _expect_run_count(page: Page, n: int) -> None:
    counter = page.get_by_text(MATCHING_RUNS)
    expect(counter).to_have_text(re.compile(rf"^\s*{n}\s+matching runs?\s*$"))


def _save_screenshot(page: Page, tmp_path: Path) -> Path:
    shot = tmp_path / SCREENSHOT_NAME
    page.screenshot(path=shot)
    assert shot.stat().st_size > 10_000, f"screenshot {shot} looks empty"
    if target := os.environ.get("MNIST_BENCH_SCREENSHOT_DIR"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / SCREENSHOT_NAME)
    return shot


def _expand_sweep(page: Page, ui: UiSweep) -> None:
    """The sweep is one row, its parent run; its button shows the jobs' runs nested below."""
    parent = page.get_by_role("gridcell", name=f"sweep {ui.sweep_id}")  # after its colour
    parent.get_by_role("button").first.click()


def test_runs_page_lists_the_sweep_and_filters_by_sweep_tag(
        page: Page, ui_sweep: UiSweep, tmp_path: Path) -> None:
    page.goto(_runs_url(ui_sweep))
    _expand_sweep(page, ui_sweep)
    # Every run of the experiment, the decoy included, as the client counts them.
    _expect_run_count(page, ui_sweep.all_run_count)
    for name in [*ui_sweep.sweep_run_names, DECOY_RUN_NAME]:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()

    # What the README says: type the tag filter into the search box and press Enter.
    search = page.get_by_test_id("search-box")
    search.fill(_sweep_filter(ui_sweep))
    search.press("Enter")
    _expect_run_count(page, len(ui_sweep.sweep_run_names))
    for name in ui_sweep.sweep_run_names:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_text(DECOY_RUN_NAME, exact=True)).to_have_count(0)
    assert "searchFilter=" in page.url, f"the filter is not in the page's URL: {page.url}"
    for lr in LRS:  # the optimizer.lr column shows each job's value
        expect(page.get_by_role("gridcell", name=lr, exact=True).first).to_be_visible()
    _save_screenshot(page, tmp_path)


def test_filtered_link_compare_and_charts(page: Page, ui_sweep: UiSweep) -> None:
    n = len(ui_sweep.sweep_run_names)
    # A link with searchFilter opens the sweep alone (shareable, as the README says).
    page.goto(_runs_url(ui_sweep, searchFilter=_sweep_filter(ui_sweep)))
    _expect_run_count(page, n)
    expect(page.get_by_text(DECOY_RUN_NAME, exact=True)).to_have_count(0)
    _expand_sweep(page, ui_sweep)

    # Select all listed runs, press Compare: the comparison page of exactly these runs.
    page.get_by_label("Select all runs").click(force=True)  # ag-grid hides the input itself
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_text(f"Comparing {n} Runs from 1 Experiment")).to_be_visible()
    for name in ui_sweep.sweep_run_names:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()

    # The chart view of the filtered runs: one chart per metric, the sweep's runs only.
    page.goto(_runs_url(ui_sweep, searchFilter=_sweep_filter(ui_sweep), compareRunsMode="CHART"))
    _expect_run_count(page, n)
    charts_search = page.get_by_placeholder("Search metric charts")
    for metric in ("val_acc", "train_loss"):  # charts below the fold render lazily: search
        charts_search.fill(metric)
        expect(page.get_by_text(metric, exact=True).first).to_be_visible()
