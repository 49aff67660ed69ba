"""What the command-line entry points share: where the configs live, how a job fails, and that
nothing read from a tracking store is unpickled."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

# Absolute, so that Hydra finds it whether a module runs as __main__ or is imported by a
# process launcher (hydra/launcher=joblib pickles the task function).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# MLflow unpickles pickle-format models by default; a tampered store could then run code in
# whatever loads a model (t-SNE's features). With this off, MLflow refuses such models and checks
# that a pt2 archive holds no pickle. Every entry point imports this module first.
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
# A model read back (predict, t-SNE) would draw a progress bar per artifact folder.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# With a tracking server MLflow prints two links per run on stdout, which holds our summaries.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class UserError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


class ReportedError(RuntimeError):
    """A failure that has been logged, with how its MLflow run ended, before it reaches the
    entry point; the entry point only sets the exit status."""


def first_line(err: Exception, limit: int = 300) -> str:
    """The first line of an error's message (MLflow's errors carry it in ``.message``)."""
    text = str(getattr(err, "message", err)).strip()
    return (text.splitlines() or [type(err).__name__])[0][:limit]


def print_error(message: str) -> None:
    """One error line on stderr, shaped like the job log's, for the moments before Hydra has
    set the log up (its callbacks, the entry point)."""
    print(f"[mnist_bench][ERROR] - {message}", file=sys.stderr)


class JobFailed(CompactHydraException):
    """A failed job of a multirun, whose error has been logged. Hydra runs the other jobs, then
    reports the failure as this one line (a compact exception) and exits 1. ``reason`` and
    ``user_error`` tell a search why its trial failed (it stops on repeated user errors)."""

    def __init__(self, err: Exception) -> None:
        self.reason, self.user_error = first_line(err), isinstance(err, UserError)
        super().__init__(f"a job of the sweep failed ({self.reason}); its run and the others "
                         "are in MLflow")


def fail_job(err: Exception) -> NoReturn:
    """Exit 1; in a multirun, raise instead so that the other jobs still run."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobFailed(err) from None
    sys.exit(1)


_signal_received: int | None = None  # the first SIGINT or SIGTERM, once one has come
_signals_deferred = False
_exiting_interrupted = False


def on_interrupt(signum: int, _frame: object) -> None:
    """SIGINT and SIGTERM: recorded, then raised as KeyboardInterrupt so that what runs ends
    KILLED, not RUNNING, unless signals are deferred (``signals_held``, between a sweep's jobs).

    Library code can swallow the raised exception (an ``except BaseException``, a finalizer);
    the record stays, and ``raise_if_interrupted`` raises it again at the next epoch or job.
    Later signals are only recorded, so that they cannot cut short the cleanup of the first.
    """
    global _signal_received
    if _signal_received is not None:
        return
    _signal_received = signum
    if not _signals_deferred:
        raise KeyboardInterrupt(f"received signal {signum}")


def handle_interrupts() -> None:
    """Route SIGINT and SIGTERM to ``on_interrupt``; a signal the process ignores stays ignored
    (a background job started without job control ignores SIGINT)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, on_interrupt):
            signal.signal(sig, on_interrupt)


def defer_signals(deferred: bool) -> None:
    """While deferred, a signal is recorded only; it is acted on at the next
    ``raise_if_interrupted``."""
    global _signals_deferred
    _signals_deferred = deferred


def raise_if_interrupted() -> None:
    if _signal_received is not None:
        raise KeyboardInterrupt(f"received signal {_signal_received}")


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block's writes are done, then raise KeyboardInterrupt
    if one came: an interrupt inside a SQLite transaction leaves the store locked. A signal the
    process ignores stays ignored. Main thread only (Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) != signal.SIG_IGN}
    came_before, deferred_before = _signal_received, _signals_deferred
    for sig in previous:
        signal.signal(sig, on_interrupt)
    defer_signals(True)
    try:
        yield
    finally:
        defer_signals(deferred_before)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came_before is None and not deferred_before:
        raise_if_interrupted()


def exit_interrupted() -> NoReturn:
    """Exit 130 after Ctrl-C or SIGTERM. A second Ctrl-C, pressed while the interpreter shuts
    down, would print a traceback from its threads: from here on both signals are ignored."""
    global _exiting_interrupted
    _exiting_interrupted = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(130)


def interrupted() -> bool:
    """Whether this process has received Ctrl-C or SIGTERM (its exit handlers ask)."""
    return _signal_received is not None or _exiting_interrupted
