"""How a command's process ends: right after its exit handlers, without the interpreter's
teardown.

When a command is done, Python runs the exit handlers (logging closes its files, MLflow ends a
run left open, a sweep's launcher stops its workers), then tears the interpreter down: it frees,
one by one, the million objects that torch and MLflow created, and unloads their libraries.
The operating system reclaims all of that at once anyway, and the teardown is a noticeable part
of a short command (docs/results/command_timings.md). A command run by :func:`run_command_then_exit`
therefore exits with its status as soon as the last exit handler has run.

The package imports this module first, so that its handler is registered before any other and
runs after all of them (Python runs exit handlers last-registered first).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable

_status: int | None = None  # set once a command has ended; None: end as Python does


def exit_status(code: object) -> int:
    """The status Python gives ``sys.exit(code)``: 0 for None, 1 for a message."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def run_command_then_exit(command: Callable[[], object]) -> None:
    """Run a process's command. Once it has returned or called ``sys.exit``, the process ends
    after the exit handlers; an uncaught error ends it as Python does (traceback, status 1)."""
    global _status
    try:
        command()
    except SystemExit as end:
        _status = exit_status(end.code)
        raise
    _status = 0


def _exit_without_teardown() -> None:
    if _status is None:
        return
    logging.shutdown()  # its own handler may have been registered before this one
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the process started without it
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to say
                stream.flush()
    os._exit(_status)


atexit.register(_exit_without_teardown)
