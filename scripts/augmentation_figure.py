"""Eight test digits (top row) and three random affine augmentations of each (rows below), as the
presets draw them: ``python scripts/augmentation_figure.py --out augmentation.png``."""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from mnist_bench.augment import random_affine  # noqa: E402
from mnist_bench.data import read_mnist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="augmentation.png")
    parser.add_argument("--data-root", default=os.environ.get("MNIST_DATA_ROOT", "data"))
    parser.add_argument("--rotation", type=float, default=10)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--translate", type=float, default=0.1)
    args = parser.parse_args()
    images, _ = read_mnist(args.data_root, train=False)
    x = images[:8].float().div(255).unsqueeze(1)
    cfg = OmegaConf.create({"rotation": args.rotation, "scale": args.scale,
                            "translate": args.translate})
    torch.manual_seed(0)
    rows = [x] + [random_affine(x, cfg) for _ in range(3)]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(8, 4.2))
    for r, batch in enumerate(rows):
        for c, image in enumerate(batch):
            axes[r, c].imshow(image[0], cmap="gray")
            axes[r, c].axis("off")
    fig.suptitle(f"rotation ±{args.rotation:g}°, zoom 1 ± {args.scale:g}, "
                 f"shift ±{args.translate:g} of the side (top: originals)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
