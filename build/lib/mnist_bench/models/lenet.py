"""LeNet-5 as in Dive into Deep Learning (the report's section 4.2.3): 61,706 parameters.

conv 6@5x5 (padding 2) -> act -> pool -> conv 16@5x5 -> act -> pool -> 120 -> 84 -> 10,
with sigmoid activations and 2x2 average pooling by default; ``activation=relu``, ``pool=max``
and ``batch_norm=true`` (before each activation) give the modern variant.
"""

from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(nn.Sequential):
    def __init__(self, activation: str = "sigmoid", pool: str = "avg", batch_norm: bool = False,
                 num_classes: int = 10) -> None:
        act, pool_layer = ACTIVATIONS[activation], POOLS[pool]

        def norm(kind: type[nn.Module], features: int) -> list[nn.Module]:
            return [kind(features)] if batch_norm else []

        super().__init__(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), *norm(nn.BatchNorm2d, 6), act(),
            pool_layer(2, 2),
            nn.Conv2d(6, 16, kernel_size=5), *norm(nn.BatchNorm2d, 16), act(), pool_layer(2, 2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), *norm(nn.BatchNorm1d, 120), act(),
            nn.Linear(120, 84), *norm(nn.BatchNorm1d, 84), act(),
            nn.Linear(84, num_classes),
        )
