"""The accuracy presets and their ingredients: augmentation on the device that keeps labels
right, lr schedules that resume where they were, and presets that train end to end."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import DATA_ROOT, run_in_process
from mnist_bench import report_tables
from mnist_bench.augment import random_affine, transform
from mnist_bench.cli import CONF_DIR
from mnist_bench.config import config_problems
from mnist_bench.data import MNISTSplits, TensorBatches, build_splits
from mnist_bench.models.smallcnn import SmallCNN
from mnist_bench.schedules import factor_function, make_scheduler
from mnist_bench.train import evaluate, fit
from mnist_bench.train_step import Recipe, make_train_step, prepare_batch

PRESETS = {"best_mlp": "mlp", "best_lenet": "lenet", "best_resnet18": "resnet18",
           "speedrun": "smallcnn"}
AFFINE = OmegaConf.create({"rotation": 10, "scale": 0.1, "translate": 0.1})
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def compose_preset(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}", *overrides])


# What each preset switches on, beyond the recipe all of them share (one-cycle, label smoothing).
INGREDIENTS = {
    "best_mlp": {"augment.rotation": 10, "optimizer.weight_decay": 0.05, "model.dropout": 0.2},
    "best_lenet": {"augment.rotation": 10, "optimizer.weight_decay": 0.05,
                   "model.activation": "relu", "model.pool": "max", "model.batch_norm": True},
    "best_resnet18": {"augment.rotation": 10, "optimizer.weight_decay": 0.05,
                      "model.stem": "imagenet"},
    "speedrun": {"augment.rotation": 0, "trainer.epochs": 1},
}


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_from_plain_groups(preset):
    cfg = compose_preset(preset)
    assert config_problems(cfg) == []
    assert cfg.model.name == PRESETS[preset] and cfg.tracking.label == preset
    assert cfg.trainer.epochs <= 30 and cfg.trainer.schedule == "onecycle"
    assert cfg.trainer.label_smoothing == 0.1
    assert {key: OmegaConf.select(cfg, key) for key in INGREDIENTS[preset]} == INGREDIENTS[preset]
    # every ingredient is a plain override, and overriding it changes only it
    off = compose_preset(preset, "augment.rotation=0", "trainer.schedule=none",
                         "trainer.label_smoothing=0")
    assert (off.augment.rotation, off.trainer.schedule, off.trainer.label_smoothing) == \
        (0, "none", 0)
    assert off.model == cfg.model and off.optimizer == cfg.optimizer


def test_the_identity_transform_reproduces_the_batch_exactly():
    x = torch.rand(16, 1, 28, 28)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(16, 2, 3)
    # exact up to float rounding: the background is subtracted before and added after
    torch.testing.assert_close(transform(x, identity), x, atol=1e-5, rtol=0)
    moved = random_affine(x, AFFINE)
    assert moved.shape == x.shape and not torch.allclose(moved, x)


def test_shifted_pixels_take_the_background_of_standardised_images():
    x = torch.full((2, 1, 28, 28), -0.4242)  # MNIST's black after data.normalize=standard
    x[:, :, 10:18, 10:18] = 2.8
    shift = torch.tensor([[1.0, 0, 0.5], [0, 1, 0]]).expand(2, 2, 3)  # a quarter of the side
    moved = transform(x, shift)
    assert moved[:, :, :, -5:].allclose(torch.tensor(-0.4242))


def spy_on_augmentation(monkeypatch) -> list[torch.device]:
    """The devices of the batches that training augments, in order."""
    seen = []

    def spy(x, cfg):
        seen.append(x.device)
        return random_affine(x, cfg)

    monkeypatch.setattr("mnist_bench.train_step.random_affine", spy)
    return seen


def test_a_batch_is_augmented_after_it_reaches_the_training_device(monkeypatch):
    seen = spy_on_augmentation(monkeypatch)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))  # on the CPU
    # "meta" stands for any other device: the CPU-only test machine has no second one
    moved, _ = prepare_batch(x, y, torch.device("meta"), False, AFFINE)
    assert [d.type for d in seen] == ["meta"] and moved.device.type == "meta"


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_runs_on_the_training_device(device, monkeypatch):
    seen = spy_on_augmentation(monkeypatch)
    cfg = compose_preset("speedrun", "trainer.epochs=1", f"device.type={device}")
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))  # on the CPU
    batches = TensorBatches(x, y, 64, shuffle=True)
    splits = MNISTSplits(batches, batches, batches, torch.Generator(), records={})
    model = SmallCNN(width=8).to(device)
    fit(model, torch.optim.Adam(model.parameters()), splits, cfg.trainer, cfg.device,
        torch.device(device), augment_cfg=AFFINE)
    assert len(seen) == 4 and {d.type for d in seen} == {device}


@pytest.fixture(scope="module")
def small_cnn(data_root):
    """A small CNN trained for one epoch on 10,000 augmented images, and the splits."""
    cfg = compose_preset("speedrun", f"data.root={DATA_ROOT}", "data.max_train_samples=10000",
                         "trainer.epochs=1", "device.type=cpu")
    torch.manual_seed(0)
    splits = build_splits(cfg.data, 128, 1024, torch.device("cpu"), 0)
    model = SmallCNN()
    fit(model, torch.optim.Adam(model.parameters(), lr=0.01), splits, cfg.trainer, cfg.device,
        torch.device("cpu"), augment_cfg=AFFINE)
    return model, splits, cfg


def accuracy(model, batches, cfg) -> float:
    return evaluate(model, batches, torch.device("cpu"), cfg.device).acc


@pytest.mark.slow
def test_augmented_digits_keep_their_labels(small_cnn):
    model, splits, cfg = small_cnn
    x, y = splits.test.x[:2000], splits.test.y[:2000]
    clean = accuracy(model, [(x, y)], cfg)
    torch.manual_seed(1)
    moved = accuracy(model, [(random_affine(x, AFFINE), y)], cfg)
    # control: a transform that does change what the digit shows (upside down: 6 <-> 9, ...)
    upside_down = torch.tensor([[-1.0, 0, 0], [0, -1, 0]]).expand(len(x), 2, 3)
    flipped = accuracy(model, [(transform(x, upside_down), y)], cfg)
    assert clean > 0.95
    assert moved > clean - 0.05
    assert flipped < clean - 0.3


def test_onecycle_warms_up_peaks_and_anneals():
    factor = factor_function("onecycle", total_steps=1000, warmup_steps=0)
    assert factor(0) == pytest.approx(1 / 25)
    assert factor(250) == pytest.approx(1.0)
    assert factor(1000) == pytest.approx(1e-4)
    assert all(factor(s) >= factor(s + 1) for s in range(250, 999))
    cosine = factor_function("cosine", total_steps=100, warmup_steps=10)
    assert (cosine(0), cosine(5), cosine(10), cosine(100)) == pytest.approx((0, 0.5, 1, 0))
    assert factor_function("none", 100, 0) is None


def test_a_resumed_schedule_continues_where_it_stopped():
    trainer = OmegaConf.create({"schedule": "onecycle", "epochs": 4, "warmup_epochs": 0})
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, trainer, steps_per_epoch=10, steps_done=0)
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    state = optimizer.state_dict()
    again = torch.optim.SGD(model.parameters(), lr=0.1)
    again.load_state_dict(state)
    make_scheduler(again, trainer, steps_per_epoch=10, steps_done=17)
    assert again.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    assert not math.isclose(again.param_groups[0]["lr"], 0.1)


def test_label_smoothing_reaches_the_loss():
    model = torch.nn.Linear(4, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = OmegaConf.create({"amp": None, "channels_last": False, "cuda_graphs": False,
                            "compile": False})
    x, y = torch.randn(8, 4), torch.randint(0, 10, (8,))
    losses = []
    for smoothing in (0.0, 0.3):
        step = make_train_step(model, model, optimizer, torch.device("cpu"), cfg,
                               Recipe(label_smoothing=smoothing))
        step.start_epoch()
        step(x, y)
        losses.append(step.running()[0])
    expected = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.3).item()
    assert losses[1] == pytest.approx(expected, rel=1e-5) and losses[0] != losses[1]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_trains_end_to_end_and_gets_its_own_report_rows(preset, tmp_path, store,
                                                                 data_root, monkeypatch):
    augmented = spy_on_augmentation(monkeypatch)
    job = run_in_process([f"+experiment={preset}", "trainer.epochs=2",
                          "data.max_train_samples=3000", "tracking.log_model=false"], tmp_path)
    run = mlflow.get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["label"] == preset
    assert run.data.params["trainer.schedule"] == "onecycle"
    assert run.data.metrics["test_acc"] > 0.3
    batches = 2 * math.ceil(3000 / compose_preset(preset).trainer.batch_size)
    assert len(augmented) == (0 if preset == "speedrun" else batches)
    runs = report_tables.load_runs("mnist_bench", None)
    assert list(runs["model"]) == [preset] and list(runs["base_model"]) == [PRESETS[preset]]
