"""An exclusive lock, across the processes of one machine, on a SQLite database: a file beside
it (``mlflow.db.lock``, ``optuna.db.lock``). MLflow and Optuna both create a new database's
tables by check-then-create, so two processes that open a new file at once would both create
them and one would fail. Other databases are servers, which serialise their clients."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from mnist_bench.cli import UserError


@contextlib.contextmanager
def sqlite_lock(url: str, what: str) -> Iterator[None]:
    """Hold the lock of the SQLite database at ``url`` (nothing for other URLs); ``what`` names
    the store in the error when its folder does not exist."""
    if not url.startswith("sqlite:///"):
        yield
        return
    db = Path(url.removeprefix("sqlite:///"))
    if not db.parent.is_dir():
        raise UserError(f"{what} {url}: the folder {db.parent} does not exist; create it or "
                        "choose another")
    with db.with_name(db.name + ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
        yield
