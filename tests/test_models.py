import pytest
import torch

from mnist_bench.models.googlenet import GoogLeNetMNIST
from mnist_bench.models.lenet import LeNet5
from mnist_bench.models.mlp import MLP
from mnist_bench.models.resnet import resnet18_mnist

CASES = [
    (MLP, {}, 104_938),
    (MLP, {"hidden": [64]}, 784 * 64 + 64 + 64 * 10 + 10),
    (LeNet5, {}, 61_706),
    (LeNet5, {"activation": "relu", "pool": "max"}, 61_706),
    (resnet18_mnist, {}, 11_175_370),
    (resnet18_mnist, {"stem": "small"}, 11_172_810),
    (GoogLeNetMNIST, {}, 9_954_366),
    (GoogLeNetMNIST, {"stem": "rgb"}, 9_960_638),
]


@pytest.mark.parametrize(("factory", "kwargs", "n_params"), CASES)
def test_parameter_count_and_output_shape(factory, kwargs, n_params):
    model = factory(**kwargs).eval()
    assert sum(p.numel() for p in model.parameters()) == n_params
    with torch.no_grad():
        assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_lenet_variant_changes_layers():
    layers = [type(m).__name__ for m in LeNet5(activation="relu", pool="max")]
    assert "ReLU" in layers and "MaxPool2d" in layers and "Sigmoid" not in layers


def test_googlenet_trains_with_auxiliary_heads():
    model = GoogLeNetMNIST().train()
    target = torch.tensor([1, 2])
    logits = model(torch.rand(2, 1, 28, 28))
    aux = model.auxiliary_loss(target)
    assert logits.shape == (2, 10) and aux.item() > 0
    (torch.nn.functional.cross_entropy(logits, target) + aux).backward()
    assert model.net.aux1.fc2.weight.grad is not None

