"""What the command-line entry points share: where the configs live, how a job fails, and that
nothing read from a tracking store is unpickled."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

from mnist_bench import app_help, process_end

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
_between_jobs = False  # in the launching process of a sweep whose jobs run in it (callbacks.py)
_writes_held = 0  # depth of signals_held blocks
_exiting_interrupted = False


def on_interrupt(signum: int, _frame: object) -> None:
    """SIGINT and SIGTERM: recorded, then raised as KeyboardInterrupt so that what runs ends
    KILLED, not RUNNING.

    Only recorded inside ``signals_held`` (a write that must not be cut short) and, for the
    first signal, between the jobs of a sweep, where Hydra composes the next job's config and an
    exception raised inside it can surface as an unrelated config error. Library code can
    swallow the raised exception (an ``except BaseException``, a finalizer): the record stays,
    and ``raise_if_interrupted`` acts on it at the next epoch or job; a repeated signal raises
    again.
    """
    global _signal_received
    first = _signal_received is None
    if first:
        _signal_received = signum
    if _writes_held or (_between_jobs and first):
        return
    raise KeyboardInterrupt(f"received signal {signum}")


def handle_interrupts() -> None:
    """Route SIGINT and SIGTERM to ``on_interrupt``; a signal the process ignores stays ignored
    (a background job started without job control ignores SIGINT)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, on_interrupt):
            signal.signal(sig, on_interrupt)


def set_between_jobs(between: bool) -> None:
    global _between_jobs
    _between_jobs = between


def raise_if_interrupted() -> None:
    if _signal_received is not None:
        raise KeyboardInterrupt(f"received signal {_signal_received}")


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block's writes are done, then raise KeyboardInterrupt
    if one came (between a sweep's jobs: at the next job's start): an interrupt inside a SQLite
    transaction leaves the store locked. A signal the process ignores stays ignored. Main
    thread only (Python delivers signals there)."""
    global _writes_held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) != signal.SIG_IGN}
    came_before = _signal_received
    for sig in previous:
        signal.signal(sig, on_interrupt)
    _writes_held += 1
    try:
        yield
    finally:
        _writes_held -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came_before is None and not _writes_held and not _between_jobs:
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


def run_command(hydra_main: Callable[[], object], config_name: str) -> None:
    """Run a command's Hydra entry point (its config: ``config_name`` in ``conf/``) as the last
    thing its process does; the process ends right after its exit handlers
    (:mod:`mnist_bench.process_end`). A plain ``--help`` is answered without Hydra's group
    listings (:mod:`mnist_bench.app_help`)."""
    def answer() -> object:
        return app_help.print_help(CONF_DIR, config_name, sys.argv[1:]) or hydra_main()

    process_end.run_command_then_exit(lambda: _run_interruptible(answer))


def _run_interruptible(hydra_main: Callable[[], object]) -> None:
    """``hydra_main`` with SIGTERM as Ctrl-C. After a signal, however the code it landed in
    handled it (an error, Hydra's exit 1, nothing), the command ends with the one line
    ``interrupted`` and status 130."""
    handle_interrupts()
    stopped = False
    try:
        hydra_main()
    except KeyboardInterrupt:  # outside any job, e.g. while Hydra starts a sweep
        stopped = True
    except SystemExit as end:
        if end.code == 130 or not interrupted():
            raise
    except Exception:  # with HYDRA_FULL_ERROR=1 Hydra re-raises instead of exiting 1
        if not interrupted():
            raise
    if stopped or interrupted():
        print_error("interrupted")
        exit_interrupted()
