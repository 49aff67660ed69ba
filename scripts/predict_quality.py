"""Accuracy of ``predict`` on digit pictures that are not MNIST's, with each preparation step
switched off once, per registered model, beside the model's MNIST test accuracy.

The pictures come from ``mnist_bench.rendered_digits`` (digits typed in matplotlib's fonts at
random sizes, offsets, stroke widths and rotations, half of them dark on light, with noise). A
picture that a preparation cannot use (e.g. dark ink when inversion is off) counts as wrong.
Prints a Markdown table.

    python scripts/predict_quality.py --tracking-uri sqlite:///mlflow.db \\
        models:/mnist-mlp@champion models:/mnist-lenet@champion --per-digit 50
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from mnist_bench.digits import ImageError, Preparation, prepare, read_image
from mnist_bench.predict import load_model, predict_probabilities
from mnist_bench.rendered_digits import write_check_set

ABLATIONS = {"all steps": Preparation(), "no inversion": Preparation(invert="never"),
             "no denoising": Preparation(denoise=False), "no crop": Preparation(crop=False),
             "no 20x20 fit": Preparation(fit=False),
             "box centre, not centre of mass": Preparation(center=False)}


def accuracy(model, pictures: list[tuple[Path, int]], steps: Preparation) -> float:
    frames, digits = [], []
    for path, digit in pictures:
        with contextlib.suppress(ImageError):  # counted as wrong
            frames.append(prepare(read_image(path), steps))
            digits.append(digit)
    probabilities = predict_probabilities(model, np.stack(frames)[:, None], 256)
    return float((probabilities.argmax(axis=1) == np.array(digits)).sum() / len(pictures))


def mnist_test_accuracy(model_uri: str) -> float:
    name, alias = model_uri.removeprefix("models:/").split("@")
    run_id = MlflowClient().get_model_version_by_alias(name, alias).run_id
    return MlflowClient().get_run(run_id).data.metrics["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uris", nargs="+", help="models:/<name>@<alias> URIs")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--per-digit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        pictures = write_check_set(Path(folder), args.per_digit, args.seed)
        rows = []
        for uri in args.model_uris:
            model = load_model(uri)
            cells = [f"{100 * accuracy(model, pictures, steps):.1f}"
                     for steps in ABLATIONS.values()]
            rows.append(f"| `{uri}` | {100 * mnist_test_accuracy(uri):.2f} | "
                        + " | ".join(cells) + " |")
    print(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on {platform.machine()} "
          f"({platform.processor() or 'CPU'}): {len(pictures)} rendered pictures "
          f"(--per-digit {args.per_digit} --seed {args.seed}), accuracy in percent.\n")
    print("| model | MNIST test | " + " | ".join(ABLATIONS) + " |")
    print("|---|---:|" + "---:|" * len(ABLATIONS))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
