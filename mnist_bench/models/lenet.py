"""LeNet-5 as in Dive into Deep Learning (the report's section 4.2.3): 61,706 parameters.

conv 6@5x5 (padding 2) -> act -> pool -> conv 16@5x5 -> act -> pool -> 120 -> 84 -> 10,
with sigmoid activations and 2x2 average pooling by default; ``activation=relu`` and
``pool=max`` give the modern variant.
"""

from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(nn.Sequential):
    def __init__(self, activation: str = "sigmoid", pool: str = "avg",
                 num_classes: int = 10) -> None:
        act, pool_layer = ACTIVATIONS[activation], POOLS[pool]
        super().__init__(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), pool_layer(2, 2),
            nn.Conv2d(6, 16, kernel_size=5), act(), pool_layer(2, 2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), act(),
            nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )
