"""mnist_bench's Optuna sweeper for Hydra: ``--multirun hydra/sweeper=optuna``."""
