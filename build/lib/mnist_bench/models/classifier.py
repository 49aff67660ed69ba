"""A trained network as it is logged, registered and served."""

from __future__ import annotations

import torch
from torch import nn

from mnist_bench.data import MNIST_MEAN, MNIST_STD, Normalize

# Model metadata that tells predict and serve what the logged model takes and returns.
CONTRACT = {"mnist_bench_input": "pixels in [0, 1], light digit on dark, shape (N, 1, 28, 28)",
            "mnist_bench_output": "probabilities of the digits 0-9, shape (N, 10)"}


class DigitClassifier(nn.Module):
    """Pixels in [0, 1] in, the probability of each digit out.

    The training scaling (``data.normalize``) and the softmax are part of the model, so that a
    client of the served model needs neither.
    """

    def __init__(self, network: nn.Module, normalize: str) -> None:
        super().__init__()
        self.network = network
        self.standardize = normalize == Normalize.standard

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - MNIST_MEAN) / MNIST_STD if self.standardize else pixels
        return torch.softmax(self.network(x), dim=1)


def network_weights(classifier_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The wrapped network's state dict, from that of a :class:`DigitClassifier`."""
    prefix = "network."
    return {k.removeprefix(prefix): v for k, v in classifier_state.items()}
