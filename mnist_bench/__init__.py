"""MNIST benchmarks: Hydra-configured training, tracked in MLflow."""

from mnist_bench import process_end  # noqa: F401  (first: its exit handler must run last)
