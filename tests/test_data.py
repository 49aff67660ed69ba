"""Data loading from tiny IDX files written by the test, splits and batching."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mnist_bench import data
from mnist_bench.config import DataConf, DeviceConf
from mnist_bench.data import DataError, TensorBatches
from mnist_bench.models.resnet import resnet18_mnist
from mnist_bench.train import train_epoch
from mnist_bench.train_step import TrainStep


def write_idx(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Small but well-formed MNIST-style IDX files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes())


def test_tiny_idx_fixture_loads_through_torchvision(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", n_train=30, n_test=12)
    train = data.load_mnist(tmp_path, train=True)
    test = data.load_mnist(tmp_path, train=False)
    assert train.data.shape == (30, 28, 28) and train.data.dtype == torch.uint8
    assert len(test.targets) == 12


def test_tiny_fixture_fails_verification_on_counts(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", n_train=30, n_test=12)
    with pytest.raises(DataError, match="holds 30 items, expected 60000"):
        data.verify_raw_files(tmp_path, check_md5=False)


def test_missing_data_names_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        data.ensure_mnist(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    for spec in data.RAW_FILES:
        assert spec.name in message


def test_real_copy_passes_checks(data_root):
    data.verify_raw_files(data_root, check_md5=True)


def test_split_is_fixed_by_its_seed_and_disjoint():
    train_a, val_a = data.split_indices(60_000, 5_000, split_seed=0)
    train_b, val_b = data.split_indices(60_000, 5_000, split_seed=0)
    _, val_c = data.split_indices(60_000, 5_000, split_seed=1)
    assert torch.equal(val_a, val_b) and not torch.equal(val_a, val_c)
    assert len(train_a) == 55_000 and len(val_a) == 5_000
    assert len(set(train_a.tolist()) & set(val_a.tolist())) == 0


def test_scaling_unit_and_standard():
    images = torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(1, 28, 2).contiguous()
    unit = data.scale_images(images, "unit")
    assert unit.shape == (1, 1, 28, 2) and unit.min() == 0 and unit.max() == 1
    standard = data.scale_images(images, "standard")
    assert standard.max().item() == pytest.approx((1 - data.MNIST_MEAN) / data.MNIST_STD)


def test_tensor_batches_cover_every_sample_once_per_epoch():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    batches = TensorBatches(x, y, batch_size=4, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    seen = torch.cat([yb for _, yb in batches])
    assert len(batches) == 3 and sorted(seen.tolist()) == list(range(10))
    assert seen.tolist() != list(range(10))  # shuffled
    for xb, yb in batches:
        assert torch.equal(xb.view(-1).long(), yb)  # images stay paired with labels


def test_tensor_batches_follow_the_generator_permutation():
    """Batches are reproducible: those of indexing with ``randperm`` of the same generator."""
    x, y = torch.rand(10, 1, 2, 2), torch.arange(10)
    batches = TensorBatches(x, y, batch_size=4, shuffle=True,
                            generator=torch.Generator().manual_seed(3))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    for (xb, yb), start in zip(batches, (0, 4, 8), strict=True):
        idx = order[start:start + 4]
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])


def test_tensor_batches_drop_last_leaves_out_the_partial_batch():
    x, y = torch.arange(9.0).view(9, 1), torch.arange(9)
    batches = TensorBatches(x, y, batch_size=4, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
    assert len(batches) == 2 and [len(yb) for _, yb in batches] == [4, 4]
    kept = TensorBatches(x, y, batch_size=4, shuffle=False)
    assert [len(yb) for _, yb in kept] == [4, 4, 1]


def small_splits(data_root: Path, n_train: int, batch_size: int,
                 loader: str = "tensor") -> data.MNISTSplits:
    """The real MNIST copy's splits, with the first ``n_train`` training images only."""
    cfg = OmegaConf.merge(OmegaConf.structured(DataConf),
                          {"root": str(data_root), "loader": loader,
                           "max_train_samples": n_train, "verify_md5": False})
    return data.build_splits(cfg, batch_size=batch_size, eval_batch_size=1024,
                             device=torch.device("cpu"), seed=0)


@pytest.mark.parametrize("loader", ["tensor", "torch"])
@pytest.mark.parametrize(("n_train", "sizes"), [(129, [64, 64]), (130, [64, 64, 2])])
def test_a_last_batch_of_one_image_is_dropped(data_root, loader, n_train, sizes):
    """Only a last batch of exactly one image is left out, on both loaders; validation keeps
    all its images."""
    splits = small_splits(data_root, n_train, batch_size=64, loader=loader)
    assert [len(yb) for _, yb in splits.train] == sizes
    assert sum(len(yb) for _, yb in splits.val) == DataConf.val_size


def test_resnet18_trains_an_epoch_that_would_end_in_a_batch_of_one(data_root):
    """BatchNorm on ResNet-18's 1x1 maps cannot train on one image ("Expected more than 1 value
    per channel"); the split above would end each epoch with such a batch."""
    splits = small_splits(data_root, n_train=9, batch_size=4)
    model = resnet18_mnist()
    step = TrainStep(model, model, torch.optim.Adam(model.parameters()), torch.device("cpu"),
                     OmegaConf.structured(DeviceConf))
    train_epoch(step, splits.train, epoch=1, desc="t", refresh_every=10, progress=False)
    assert step.seen == 8
