"""Time the commands a user runs, for the working tree and, side by side, a baseline revision.

Each timing is the wall time of one whole ``python -m mnist_bench ...`` process (interpreter
start, imports, Hydra, data, training, MLflow), i.e. what a user waits for: 1. ``model=mlp
trainer.epochs=1`` after one untimed run in the same launch folder (so its ``mlflow.db`` exists);
2. ``trainer.epochs=0``, a config error (must exit non-zero); 3. ``--help``; 4. ``--cfg job``;
5.-7. ``--help`` of the commands that read runs: ``python -m mnist_bench.report``, ``register``,
``runs``; 8. ``python -m mnist_bench.tsne --help``; 9. ``python -m mnist_bench.tsne n_samples=10``,
a config error; 10. ``scripts/library_floor.py`` of the working tree (in both columns): what torch
and MLflow alone cost a tracked run, in one process, before any of the project's own work.

Each command runs in a fresh temporary launch folder per tree, with ``PYTHONPATH`` set to that
tree's root (the package finds ``conf/`` next to itself; the floor script always runs with the
working tree's), ``$MNIST_DATA_ROOT`` passed on and ``$MLFLOW_TRACKING_URI`` removed. The
baseline is a temporary ``git worktree`` of ``REV``; a command it does not have yet is shown as
such. Trees alternate within each repeat so that drift affects both alike. Prints a Markdown
table.

    MNIST_DATA_ROOT=../shared/data python scripts/time_commands.py --baseline HEAD~1 --out t.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    label: str
    args: tuple[str, ...]
    expect_ok: bool = True
    warm_up: bool = False
    script: str | None = None  # run this file of the working tree instead of ``-m <module>``
    module: str = "mnist_bench"

    def argv(self) -> list[str]:
        return [str(REPO / self.script)] if self.script else ["-m", self.module, *self.args]

    def package_root(self, tree: Tree) -> Path:
        """The working tree's package for its own script (the same program in every column),
        else the tree's."""
        return REPO if self.script else tree.root

    def exists_in(self, root: Path) -> bool:
        """Whether ``root``'s tree has the command (an older baseline may lack a module)."""
        if self.script:
            return True  # the working tree's script runs for every tree
        module = root.joinpath(*self.module.split("."))
        return (module / "__main__.py").is_file() or module.with_suffix(".py").is_file()


COMMANDS = (
    Command("train 1 epoch (existing store)", ("model=mlp", "trainer.epochs=1"), warm_up=True),
    Command("config error", ("trainer.epochs=0",), expect_ok=False),
    Command("--help", ("--help",)),
    Command("--cfg job", ("--cfg", "job")),
    Command("report --help", ("--help",), module="mnist_bench.report"),
    Command("register --help", ("--help",), module="mnist_bench.register"),
    Command("runs --help", ("--help",), module="mnist_bench.runs"),
    Command("tsne --help", ("--help",), module="mnist_bench.tsne"),
    Command("tsne config error", ("n_samples=10",), module="mnist_bench.tsne", expect_ok=False),
    Command("libraries alone (scripts/library_floor.py)", (), warm_up=True,
            script="scripts/library_floor.py"),
)


@dataclass
class Tree:
    name: str
    root: Path
    times: dict[str, list[float]] = field(default_factory=dict)


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"git {' '.join(args)} failed: {last}")
    return proc.stdout.strip()


@contextlib.contextmanager
def baseline_worktree(rev: str) -> Iterator[Path]:
    """A detached worktree of ``rev`` in a temporary folder, removed on any exit."""
    path = Path(tempfile.mkdtemp(prefix="mnist_bench_baseline_"))
    try:
        git("worktree", "add", "--detach", str(path), rev)
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                       capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def run(root: Path, cwd: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time and output of ``python ARGS`` with ``root``'s package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def check_import(tree: Tree, cwd: Path) -> None:
    _, proc = run(tree.root, cwd, ["-c", "import mnist_bench; print(mnist_bench.__file__)"])
    found = proc.stdout.strip()
    if proc.returncode != 0 or not Path(found).resolve().is_relative_to(tree.root.resolve()):
        got = found or (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"{tree.name}: mnist_bench imports from {got}, not from {tree.root}")


def time_command(cmd: Command, trees: list[Tree], repeats: int, tmp: Path) -> None:
    """A warm-up if asked, then ``repeats`` timed runs, the trees that have it alternating."""
    trees = [tree for tree in trees if cmd.exists_in(tree.root)]
    launch = {tree.name: Path(tempfile.mkdtemp(dir=tmp)) for tree in trees}
    for i in range(0 if cmd.warm_up else 1, repeats + 1):
        for tree in trees:
            seconds, proc = run(cmd.package_root(tree), launch[tree.name], cmd.argv())
            if (proc.returncode == 0) != cmd.expect_ok:
                tail = "\n".join(proc.stderr.splitlines()[-15:])
                raise SystemExit(f"{cmd.label} ({tree.name}) exited {proc.returncode}, expected "
                                 f"{'0' if cmd.expect_ok else 'non-zero'}; stderr tail:\n{tail}")
            what = f"run {i}/{repeats}" if i else "warm-up (untimed)"
            print(f"{cmd.label} | {tree.name} | {what}: {seconds:.2f} s", file=sys.stderr)
            if i:
                tree.times.setdefault(cmd.label, []).append(seconds)


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", info.read_text(), re.M) if info.exists() else None
    return found[1] if found else platform.processor() or platform.machine()


def header(base_sha: str | None, repeats: int) -> str:
    current = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        current += " + uncommitted changes"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    trees = f"baseline {base_sha}, current {current}" if base_sha else f"current {current}"
    return (f"{when}; {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}, "
            f"torch {importlib.metadata.version('torch')}; {trees}; repeats: {repeats}")


def table(trees: list[Tree]) -> list[str]:
    cols = ["command", *(f"{tree.name} median s (min–max)" for tree in trees)]
    cols += ["ratio (baseline/current)"] if len(trees) == 2 else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for cmd in COMMANDS:
        times = [tree.times.get(cmd.label) for tree in trees]
        cells = [cmd.label, *(f"{statistics.median(t):.2f} ({min(t):.2f}–{max(t):.2f})"
                              if t else "(no such command)" for t in times)]
        if len(trees) == 2:
            cells.append(f"{statistics.median(times[0]) / statistics.median(times[1]):.2f}"
                         if all(times) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_args() -> argparse.Namespace:
    intro, rest = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=intro, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="git revision to time side by side")
    parser.add_argument("--repeats", metavar="N", type=int, default=5,
                        help="timed runs per command and tree (default: 5)")
    parser.add_argument("--out", metavar="FILE.md", type=Path, help="also write the table here")
    parser.add_argument("--data-root", default=os.environ.get("MNIST_DATA_ROOT"),
                        help="folder holding MNIST/raw/ (default: $MNIST_DATA_ROOT)")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if not args.data_root or not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        raise SystemExit(f"no MNIST/raw/ in {args.data_root!r}; set $MNIST_DATA_ROOT/--data-root")
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` cleans up like Ctrl-C
    os.environ["MNIST_DATA_ROOT"] = str(Path(args.data_root).resolve())  # runs start elsewhere
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each launch folder gets its own mlflow.db
    base_sha = git("rev-parse", "--short", f"{args.baseline}^{{commit}}") if args.baseline else None
    first_line = header(base_sha, args.repeats)  # the trees as they are when timing begins
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mnist_bench_time_")))
        trees = [Tree("current", REPO)]
        if args.baseline:
            trees.insert(0, Tree("baseline", stack.enter_context(baseline_worktree(args.baseline))))
        os.environ["TMPDIR"] = str(tmp)  # the runs' temporary files (MLflow store locks) go here
        for tree in trees:
            check_import(tree, tmp)
        for cmd in COMMANDS:
            time_command(cmd, trees, args.repeats, tmp)
    text = "\n".join([first_line, "", *table(trees)]) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
