"""scripts/time_commands.py against a baseline that lacks some of today's commands."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("time_commands",
                                                  REPO / "scripts" / "time_commands.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_baseline_without_a_command_is_shown_without_it_and_without_a_ratio(tmp_path):
    tc = load_script()
    package = tmp_path / "mnist_bench"
    package.mkdir()
    for name in ("__main__.py", "report.py"):  # an old tree: no register, runs, tsne
        (package / name).write_text("")
    old, current = tc.Tree("baseline", tmp_path), tc.Tree("current", REPO)
    by_label = {cmd.label: cmd for cmd in tc.COMMANDS}
    assert not by_label["register --help"].exists_in(tmp_path)
    assert by_label["report --help"].exists_in(tmp_path)
    assert by_label["--help"].exists_in(tmp_path)
    assert all(cmd.exists_in(REPO) for cmd in tc.COMMANDS)
    floor = next(cmd for cmd in tc.COMMANDS if cmd.script)
    assert floor.exists_in(tmp_path) and floor.package_root(old) == REPO  # one program for both

    for cmd in tc.COMMANDS:
        for tree, seconds in ((old, [4.0, 2.0, 3.0]), (current, [1.0, 2.0, 1.5])):
            if cmd.exists_in(tree.root):
                tree.times[cmd.label] = seconds
    rows = {line.split(" | ")[0].lstrip("| "): line for line in tc.table([old, current])[2:]}
    assert rows["register --help"].endswith("| (no such command) | 1.50 (1.00–2.00) | – |")
    assert rows["report --help"].endswith("| 3.00 (2.00–4.00) | 1.50 (1.00–2.00) | 2.00 |")
