"""Per-epoch checkpoints, written atomically and read back with ``weights_only=True``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_bench.cli import UserError

CHECKPOINT_NAME = "checkpoint.pt"
ZIP_MAGIC = b"PK\x03\x04"
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "rng", "history", "train_time_s",
                   "best_val_acc", "mlflow_run_id")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or written; the message names the file and why."""


class FolderHeld(CheckpointError):
    """Another process holds the checkpoint folder: it writes (or resumes) the same run."""


@contextlib.contextmanager
def folder_held(folder: Path) -> Iterator[None]:
    """Hold ``folder`` (an exclusive ``flock``) while this process writes its checkpoint.

    The checkpoint file itself cannot carry the lock: every save replaces it by a new file.
    The kernel releases the lock when the process ends, however it ends.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderHeld(f"{folder} is held by another process") from None
    try:
        yield
    finally:
        os.close(fd)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    ``os.replace`` is atomic on POSIX, so a kill mid-write leaves the previous checkpoint intact.
    """
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # torch reports a full disk as RuntimeError
            raise CheckpointError(f"could not write the checkpoint {path} (is the disk full?): "
                                  f"{' '.join(str(err).split())[:200]}") from None
        raise


def _load_failure(err: Exception) -> str:
    if isinstance(err, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain containers, which "
                "torch.load(weights_only=True) refuses to load because they could run code")
    return " ".join(str(err).split())[:200]


def _starts_as_zip(path: str | Path) -> bool:
    """Whether the file begins like torch.save's zip archive (a cut one still does)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ZIP_MAGIC
    except OSError:
        return True  # torch.load reports why it cannot be read


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain containers, never code."""
    if not _starts_as_zip(path):
        raise CheckpointError(f"{path}: not a checkpoint (mnist_bench writes them with "
                              "torch.save, as zip archives; this file is not one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, OSError ...
        raise CheckpointError(f"{path}: not a loadable checkpoint: {_load_failure(err)}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path}: not an mnist_bench checkpoint (lacks {', '.join(missing)})")
    return state
