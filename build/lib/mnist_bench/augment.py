"""Random affine augmentation of whole batches on the training device.

Each image of a batch gets its own rotation, scale and shift, drawn at once for the batch and
applied by one ``affine_grid`` + ``grid_sample`` call, so the tensor data path stays a few
kernels per batch on any device. Pixels moved in from outside the image take its background
value (its darkest pixel), whatever the normalisation.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def is_identity(augment_cfg) -> bool:
    return not (augment_cfg.rotation or augment_cfg.scale or augment_cfg.translate)


def affine_matrices(n: int, rotation_deg: float, scale: float, translate: float,
                    device: torch.device) -> torch.Tensor:
    """``n`` random 2x3 matrices in ``affine_grid``'s coordinates (the image spans [-1, 1]):
    rotation uniform in ±``rotation_deg``, zoom in 1 ± ``scale``, shift in ± ``translate`` of
    the image's side."""
    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device) * 2 - 1

    angle = uniform(n) * math.radians(rotation_deg)
    zoom = 1 + uniform(n) * scale
    shift = uniform(n, 2) * 2 * translate  # a shift of the whole side is 2 in these coordinates
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def random_affine(x: torch.Tensor, augment_cfg) -> torch.Tensor:
    """``x`` (N, C, H, W) with each image moved by its own random affine transform."""
    theta = affine_matrices(len(x), augment_cfg.rotation, augment_cfg.scale,
                            augment_cfg.translate, x.device)
    return transform(x, theta)


def transform(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    moved = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return moved + background
