"""GoogLeNet from torchvision (aux_logits=True, init_weights=True) for one-channel digits.

The report's "LeNet" parameter table (its Figure 17) lists a GoogLeNet of 10.0 M parameters and
39.817 MB, so its LeNet numbers were most likely produced with this network. Two ways to feed a
grey image are offered:

* ``stem="gray"`` (default) replaces the first 7x7 convolution by a one-channel one:
  9,954,366 parameters, i.e. 39.817 MB in fp32, exactly the size the report prints.
* ``stem="rgb"`` keeps torchvision's three-channel convolution and repeats the grey channel:
  9,960,638 parameters.

It trains with the two auxiliary classifiers weighted by ``aux_weight`` (0.3, as in the GoogLeNet
paper) and predicts with the main head only.
"""

import torch
from torch import nn
from torchvision.models import googlenet


class GoogLeNetMNIST(nn.Module):
    def __init__(self, stem: str = "gray", aux_weight: float = 0.3, num_classes: int = 10) -> None:
        super().__init__()
        net = googlenet(weights=None, num_classes=num_classes, aux_logits=True,
                        init_weights=True, transform_input=False)
        if stem == "gray":
            net.conv1.conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net = net
        self.repeat_channels = stem == "rgb"
        self.aux_weight = aux_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits; in training mode the auxiliary logits are kept for the loss."""
        if self.repeat_channels:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(x)
        if self.training:
            self.aux_logits = (out.aux_logits1, out.aux_logits2)
            return out.logits
        return out

    def auxiliary_loss(self, target: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy of the auxiliary heads for the last training forward pass."""
        aux_logits = self.__dict__.pop("aux_logits")  # drop the graph once the loss is built
        losses = [nn.functional.cross_entropy(logits, target) for logits in aux_logits]
        return self.aux_weight * sum(losses)
