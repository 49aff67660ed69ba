"""A small CNN for the speedrun preset: three conv-BN-ReLU stages (``width``, 2x, 4x channels,
3x3 kernels) with max pooling between them, a global max pool and one linear layer."""

from torch import nn


def conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    def __init__(self, width: int = 24, num_classes: int = 10) -> None:
        super().__init__(
            *conv_block(1, width), nn.MaxPool2d(2),
            *conv_block(width, 2 * width), nn.MaxPool2d(2),
            *conv_block(2 * width, 4 * width), nn.AdaptiveMaxPool2d(1),
            nn.Flatten(), nn.Linear(4 * width, num_classes),
        )
