"""Multi-layer perceptron: 784 -> 128 -> 32 -> 10 with ReLU (104,938 parameters by default);
``dropout`` after each hidden layer (none by default)."""

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    def __init__(self, hidden: Sequence[int] = (128, 32), dropout: float = 0.0,
                 num_classes: int = 10, in_features: int = 28 * 28) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(dropout)] if dropout else []
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
