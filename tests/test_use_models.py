"""Using trained models: digit pictures prepared as MNIST's were, ``predict`` on image files,
``register`` of a sweep's best model with an alias that moves only on improvement, and a real
``mlflow models serve`` answering with the same probabilities (``slow``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import open_dict
from PIL import Image

from conftest import DATA_ROOT, free_port, run_cli, run_in_process, sqlite_uri
from mnist_bench import register
from mnist_bench.cli import CONF_DIR, UserError
from mnist_bench.data import read_mnist
from mnist_bench.digits import ImageError, Preparation, image_files, prepare, read_image
from mnist_bench.predict import predict
from mnist_bench.rendered_digits import digit_of, write_check_set

TRAIN = ["model=mlp", "device=cpu", "trainer.epochs=1", "data.max_train_samples=5000",
         "optimizer.lr=0.001"]


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_mnist(DATA_ROOT, train=False)
    return images.numpy(), labels.numpy()


def as_photo(frame: np.ndarray, scale: int, offset: tuple[int, int], dark_on_light: bool,
             noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """An MNIST frame as someone's picture of it: larger, off centre, maybe inverted, noisy."""
    big = np.asarray(Image.fromarray(frame).resize((28 * scale, 28 * scale), Image.BILINEAR))
    canvas = np.zeros((28 * scale + 60, 28 * scale + 90), dtype=np.float32)
    canvas[offset[0]:offset[0] + big.shape[0], offset[1]:offset[1] + big.shape[1]] = big / 255
    canvas += np.random.default_rng(seed).normal(0, noise, canvas.shape).astype(np.float32)
    canvas = np.clip(canvas, 0, 1)
    return 1 - canvas if dark_on_light else canvas


def save_png(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ preparation -----------

def similarity(frame: np.ndarray, original: np.ndarray) -> float:
    """The best correlation of the two 28x28 frames within a shift of one pixel (a centre of
    mass is placed to the nearest pixel)."""
    return max(np.corrcoef(np.roll(frame, (dy, dx), (0, 1)).ravel(), original.ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@pytest.mark.parametrize("dark_on_light", [False, True], ids=["light-on-dark", "dark-on-light"])
@pytest.mark.parametrize(("scale", "offset", "noise"), [(1, (5, 70), 0.0), (4, (50, 10), 0.05)])
def test_a_picture_of_an_mnist_digit_becomes_that_digit_again(mnist_test, dark_on_light, scale,
                                                             offset, noise):
    images, _ = mnist_test
    for index in range(20):
        original = images[index].astype(np.float32) / 255
        photo = as_photo(images[index], scale, offset, dark_on_light, noise, seed=index)
        frame = prepare(photo)
        assert frame.shape == (28, 28) and frame.min() >= 0 and frame.max() <= 1
        assert similarity(frame, original) > 0.9, index


def test_each_step_can_be_switched_off(mnist_test):
    photo = as_photo(mnist_test[0][0], 3, (40, 5), dark_on_light=True)
    whole = prepare(photo, Preparation(crop=False))  # the canvas, not the digit, is scaled
    assert (whole > 0.5).sum() < (prepare(photo) > 0.5).sum() / 2
    with pytest.raises(ImageError, match="no digit found"):  # no light ink on the light sheet
        prepare(photo, Preparation(invert="never"))
    assert similarity(prepare(1 - photo, Preparation(invert="never")), prepare(photo)) > 0.99
    box = prepare(photo, Preparation(center=False))
    ys, xs = np.nonzero(box)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(14, abs=0.5)
    assert (xs.min() + xs.max()) / 2 == pytest.approx(14, abs=0.5)


BAD_FILES = {
    "not an image": (lambda p: p.write_text("a note"), "not an image (PNG, JPEG"),
    "empty file": (lambda p: p.write_bytes(b""), "not an image"),
    "blank": (lambda p: save_png(np.full((40, 40), 0.8, np.float32), p), "no digit found"),
    "huge": (lambda p: Image.new("1", (6000, 6000)).save(p), "too large (6000 x 6000 pixels"),
    "damaged": (lambda p: p.write_bytes(save_png(np.random.default_rng(0).random(
        (200, 200), np.float32), p).read_bytes()[:5000]), "damaged image"),
    "missing": (lambda p: p.symlink_to(p.parent / "gone.png"), "cannot be read (No such file"),
    "bomb": (lambda p: Image.new("1", (20000, 20000)).save(p), "too large (Image size"),
}


@pytest.mark.parametrize(("make", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_picture_is_one_line(tmp_path, make, message):
    path = tmp_path / "digit.png"
    make(path)
    with pytest.raises(ImageError, match=message.replace("(", r"\(")) as caught:
        prepare(read_image(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((2, 28, 28)), "one 2-D array of numbers"),
    (np.array([{"a": 1}], dtype=object), "not a plain .npy array"),  # would need unpickling
    (np.full((28, 28), np.nan), "NaN or infinite"),
    (np.zeros((0, 5)), "empty image"),
])
def test_a_bad_array_is_one_line(tmp_path, array, message):
    np.save(tmp_path / "digit.npy", array, allow_pickle=True)
    with pytest.raises(ImageError, match=message):
        read_image(tmp_path / "digit.npy")


def test_inputs_name_a_file_a_folder_or_a_glob(tmp_path):
    for name in ("a.png", "b.jpg", "notes.txt"):
        (tmp_path / name).touch()
    assert image_files(str(tmp_path)) == [tmp_path / "a.png", tmp_path / "b.jpg"]
    assert image_files(str(tmp_path / "*.png")) == [tmp_path / "a.png"]
    assert image_files(str(tmp_path / "notes.txt")) == [tmp_path / "notes.txt"]


# ------------------------------------------------------------------ predict ----------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> tuple[Path, str, float]:
    """A small MLP run with its logged model: launch folder, model URI, test accuracy."""
    folder = tmp_path_factory.mktemp("trained")
    job = run_in_process([*TRAIN, f"tracking.uri={sqlite_uri(folder)}"], folder)
    run = MlflowClient(tracking_uri=sqlite_uri(folder)).get_run(job.run_id)
    return folder, run.data.tags["model_uri"], run.data.metrics["test_acc"]


def predict_in_process(overrides: list[str], launch_dir: Path) -> tuple[str, int]:
    """``python -m mnist_bench.predict <overrides>`` in this process: its stdout and the
    number of files it could not read."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(launch_dir)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="predict", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            n_bad = predict(cfg)
    return out.getvalue(), n_bad


def test_predict_reads_pictures_of_test_digits_as_well_as_the_model_reads_mnist(
        trained, mnist_test, tmp_path):
    folder, model_uri, test_acc = trained
    images, labels = mnist_test
    for index in range(100):
        photo = as_photo(images[index], 2 + index % 3, (index % 50, 80 - index % 70),
                         dark_on_light=index % 2 == 0, noise=0.03, seed=index)
        save_png(photo, tmp_path / f"{index:03d}.png")
    (tmp_path / "zz_broken.png").write_text("not a picture")
    stdout, n_bad = predict_in_process(
        [f"model_uri={model_uri}", f"inputs={tmp_path}/*.png",
         f"tracking.uri={sqlite_uri(folder)}", f"output={tmp_path / 'table.csv'}"], folder)
    assert n_bad == 1
    table = pd.read_csv(tmp_path / "table.csv")
    assert len(table) == 100 and "zz_broken" not in stdout
    accuracy = (table["digit"].to_numpy() == labels[:100]).mean()
    assert accuracy >= test_acc - 0.08, (accuracy, test_acc)
    assert table["probability"].between(0.1, 1).all()
    first = table["top3"].str.split(", ").str[0].str.split(" ").str[0].astype(int)
    assert (first == table["digit"]).all()


def test_predict_refuses_a_model_without_probabilities(trained, tmp_path):
    """A model without the metadata saying it returns probabilities (as models were logged
    before they did) is refused: predict would print raw scores as probabilities."""
    folder, model_uri, _ = trained
    mlflow.set_tracking_uri(sqlite_uri(folder))
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m")))
    mlmodel = (local / "MLmodel").read_text()
    assert "mnist_bench_output" in mlmodel
    (local / "MLmodel").write_text("\n".join(line for line in mlmodel.splitlines()
                                             if "mnist_bench_" not in line
                                             and not line.startswith("metadata:")))
    save_png(np.eye(28, dtype=np.float32), tmp_path / "one.png")
    with pytest.raises(UserError, match="not an mnist_bench digit model that returns"):
        predict_in_process([f"model_uri={local}", f"inputs={tmp_path / 'one.png'}",
                            f"tracking.uri={sqlite_uri(folder)}"], folder)


# ------------------------------------------------------------------ register ---------------

def train_sweep(folder: Path, sweep_id: str, cells: dict[str, list[str]],
                seeds: tuple[int, ...]) -> None:
    for overrides in cells.values():
        for seed in seeds:
            run_in_process([*TRAIN, *overrides, f"trainer.seed={seed}",
                            "data.max_train_samples=2000", f"tracking.sweep_id={sweep_id}",
                            f"tracking.uri={sqlite_uri(folder)}"], folder)


def registered(client: MlflowClient) -> tuple[str, list[str]]:
    """The run id that mnist-mlp@champion points at, and the run ids of all its versions."""
    champion = client.get_model_version_by_alias("mnist-mlp", "champion").run_id
    return champion, [v.run_id for v in client.search_model_versions("name = 'mnist-mlp'")]


def test_register_picks_the_best_cell_by_mean_validation_and_moves_only_on_improvement(
        tmp_path, data_root, capsys):
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path))
    args = ["--tracking-uri", sqlite_uri(tmp_path)]
    train_sweep(tmp_path, "A", {"slow": ["optimizer.lr=0.00001"], "fast": ["optimizer.lr=0.003"]},
                seeds=(0, 1))
    runs = mlflow.search_runs(experiment_names=["mnist_bench"])
    cells = runs.groupby("params.optimizer.lr")["metrics.val_acc"].mean()
    best_lr = cells.idxmax()  # computed here, from MLflow, independently of register
    in_cell = runs[runs["params.optimizer.lr"] == best_lr]
    expected = in_cell.loc[in_cell["metrics.val_acc"].idxmax(), "run_id"]

    assert register.main([*args, "--sweep-id", "A"]) == 0
    out = capsys.readouterr().out
    assert "-> models:/mnist-mlp@champion" in out and "(mean of 2 runs)" in out
    assert registered(client) == (expected, [expected])
    assert register.main([*args, "--sweep-id", "A"]) == 0  # again: nothing new
    assert registered(client) == (expected, [expected])

    train_sweep(tmp_path, "B", {"worse": ["optimizer.lr=0.00002"]}, seeds=(0,))
    assert register.main([*args, "--sweep-id", "B"]) == 0
    assert "@champion stays version 1" in capsys.readouterr().out
    assert registered(client) == (expected, [expected])

    train_sweep(tmp_path, "C", {"better": ["optimizer.lr=0.003", "data.max_train_samples=5000"]},
                seeds=(0,))
    assert register.main([*args]) == 0  # the latest sweep, C
    assert "is @champion (was version 1" in capsys.readouterr().out
    champion, versions = registered(client)
    assert champion != expected and versions[-1:] + versions[:-1] in ([champion, expected],
                                                                     [expected, champion])


def test_register_says_when_no_run_logged_a_model(tmp_path, data_root, capsys):
    run_in_process([*TRAIN, "tracking.log_model=false", "tracking.sweep_id=S",
                    f"tracking.uri={sqlite_uri(tmp_path)}"], tmp_path)
    assert register.main(["--tracking-uri", sqlite_uri(tmp_path)]) == 2
    assert "mlp: no finished run with a logged model" in capsys.readouterr().err


# ------------------------------------------------------------------ serve (slow) -----------

@pytest.mark.slow
def test_served_model_answers_with_the_probabilities_of_predict(trained, tmp_path):
    folder, model_uri, _ = trained
    uri = sqlite_uri(folder)
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, "mnist-served")
    MlflowClient().set_registered_model_alias("mnist-served", "champion", version.version)
    pictures = [(p, d) for p, d in write_check_set(tmp_path / "digits", per_digit=1)]
    proc = run_cli(["model_uri=models:/mnist-served@champion", f"inputs={tmp_path}/digits",
                    f"tracking.uri={uri}", f"output={tmp_path}/table.csv",
                    f"request={tmp_path}/request.json"], cwd=folder, module="mnist_bench.predict")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table["file"]) == [str(p) for p, _ in pictures]
    assert [digit_of(Path(f)) for f in table["file"]] == list(range(10))

    port = free_port()
    # the server runs `uvicorn` from PATH: this interpreter's, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",  # as the README serves it
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/mnist-served@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the server did not answer /ping in 180 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=(tmp_path / "request.json").read_bytes(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert served.shape == (10, 10)
    np.testing.assert_allclose(served.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(served.argmax(axis=1), table["digit"])
    np.testing.assert_allclose(served.max(axis=1), table["probability"], atol=1e-4)
    sent = np.asarray(json.loads((tmp_path / "request.json").read_text())["inputs"], np.float32)
    local = mlflow.pyfunc.load_model("models:/mnist-served@champion").predict(sent)
    np.testing.assert_allclose(served, local, atol=1e-6)  # the pyfunc, in this process


@pytest.mark.slow  # a subprocess that imports torch and MLflow
def test_predict_without_its_two_values_says_what_to_give(tmp_path):
    proc = run_cli([], cwd=tmp_path, module="mnist_bench.predict")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "inputs and model_uri must be given, e.g. python -m mnist_bench.predict" in proc.stderr


def test_a_model_that_ships_its_own_loader_code_is_refused_unrun(trained, tmp_path):
    """An MLmodel whose python_function flavour names a loader module in its own code folder:
    MLflow would import it, running it. The trap is checked to be real, then refused."""
    folder, _, _ = trained
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    marker = tmp_path / "code_ran"
    (model / "code" / "trapmod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (model / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: trapmod\n    code: code\n"
        "    python_version: 3.11.7\nmetadata:\n  mnist_bench_output: probabilities\n")
    save_png(np.eye(28, dtype=np.float32), tmp_path / "one.png")
    with pytest.raises(UserError, match="refused: not a PyTorch model loaded by mlflow.pytorch"):
        predict_in_process([f"model_uri={model}", f"inputs={tmp_path / 'one.png'}",
                            f"tracking.uri={sqlite_uri(folder)}"], folder)
    assert not marker.exists()
    with contextlib.suppress(Exception):
        mlflow.pyfunc.load_model(str(model))  # what predict would have done before
    assert marker.exists()  # the trap is real


def test_a_16_bit_scan_is_read_over_its_own_range(mnist_test, tmp_path):
    """Dark ink at 5,000 on paper at 50,000 of 65,535: not blank after 8-bit clipping."""
    original = mnist_test[0][0].astype(np.float32) / 255
    photo = as_photo(mnist_test[0][0], 2, (10, 10), dark_on_light=True)
    Image.fromarray((5000 + photo * 45000).astype(np.uint16)).save(tmp_path / "scan.png")
    assert similarity(prepare(read_image(tmp_path / "scan.png")), original) > 0.9


def test_predict_refuses_an_output_it_could_not_write_before_any_work(trained, tmp_path):
    folder, model_uri, _ = trained
    with pytest.raises(UserError, match=r"output='/nonexistent/x.csv': not a file in an existing"):
        predict_in_process([f"model_uri={model_uri}", f"inputs={tmp_path}",
                            "output=/nonexistent/x.csv", f"tracking.uri={sqlite_uri(folder)}"],
                           folder)


@pytest.mark.parametrize("alias", ["bad/alias", "x y", "", "v1", "latest", "9lives"])
def test_register_refuses_an_alias_mlflow_would_refuse_before_registering(alias, tmp_path,
                                                                        capsys):
    assert register.main(["--tracking-uri", sqlite_uri(tmp_path), "--alias", alias]) == 2
    assert f"--alias {alias!r}: letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
