"""ResNet-18 from torchvision with a one-channel stem (11,175,370 parameters, as in the report).

``stem="imagenet"`` keeps the report's 7x7 stride-2 convolution and max-pool, which shrink a
28x28 digit to 7x7 before the first residual stage. ``stem="small"`` uses a 3x3 stride-1
convolution and no max-pool, the usual choice for small images.
"""

from torch import nn
from torchvision.models import resnet18


def resnet18_mnist(stem: str = "imagenet", num_classes: int = 10) -> nn.Module:
    model = resnet18(weights=None, num_classes=num_classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
