"""A command's process ends after its exit handlers, with its status and all its output, and
without the interpreter's teardown (mnist_bench/process_end.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Runs ``command`` as a command's process does, or as a plain call (the control). A module
# global whose finalizer prints shows whether the interpreter tore the modules down.
SCRIPT = textwrap.dedent("""
    import atexit, sys
    from mnist_bench import process_end

    class Teardown:
        def __del__(self):
            print("torn down", flush=True)

    witness = Teardown()

    def command():
        atexit.register(print, "exit handler ran")
        print("summary line")  # stdout is a pipe: block-buffered, flushed by nobody else
        {body}

    if sys.argv[1] == "command":
        process_end.run_command_then_exit(command)
    else:
        command()
""")


def run(body: str, how: str = "command") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", SCRIPT.format(body=body), how],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(("body", "status"), [("pass", 0), ("sys.exit(3)", 3),
                                              ("sys.exit(None)", 0)])
def test_a_command_ends_with_its_status_and_output_but_no_teardown(body, status):
    done = run(body)
    assert done.returncode == status
    assert done.stdout.splitlines() == ["summary line", "exit handler ran"]

    control = run(body, how="plain call")  # the witness can see a teardown
    assert control.returncode == status
    assert control.stdout.splitlines() == ["summary line", "exit handler ran", "torn down"]


def test_an_exit_with_a_message_prints_it_and_ends_with_status_1():
    done = run("sys.exit('no MLflow store here')")
    assert (done.returncode, done.stderr.strip()) == (1, "no MLflow store here")


def test_an_uncaught_error_ends_the_process_as_python_does():
    done = run("raise ValueError('a bug')")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: a bug" in done.stderr
    assert done.stdout.splitlines() == ["summary line", "exit handler ran", "torn down"]


def test_a_process_started_without_stdout_ends_quietly():
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stdout = None\n"
         "from mnist_bench import process_end\nprocess_end.run_command_then_exit(lambda: None)"],
        capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
