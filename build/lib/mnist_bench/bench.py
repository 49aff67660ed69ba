"""``python -m mnist_bench.bench``: time one training epoch per model, the report's setup against
the project's, side by side in one process.

Paths (each one a set of Hydra overrides on the project's own configs, run through the project's
own ``train_epoch`` and ``evaluate``):

* ``report`` (a): ``torchvision.datasets.MNIST`` with ``ToTensor()`` and a shuffled
  ``DataLoader`` (``num_workers=0``), Adam as torch builds it by default, fp32, eager, torch's
  default thread count, validation at the training batch size: the report's setup.
* ``default`` (b): what ``python -m mnist_bench`` does by default on this machine.
* ``fastest`` (c, CUDA only): the default (fused Adam, the whole step as one CUDA graph) plus
  bf16 autocast and channels_last.
* ``--variant``: the default plus any overrides, to measure one lever at a time.

Each path first trains one untimed warm-up epoch, which holds compilation and autotuning; the
table reports its extra time as ``overhead s``. The timed epochs then run round-robin across the
paths, so that a noisy neighbour slows all of them alike, and the table reports medians.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mnist_bench.cli import CONF_DIR
from mnist_bench.config import MODEL_SCHEMAS, DeviceType, build, config_problems, register_configs
from mnist_bench.data import DataError, MNISTSplits, build_splits
from mnist_bench.train import (
    apply_device_settings,
    evaluate,
    prepare_model,
    resolve_device,
    train_epoch,
)
from mnist_bench.train_step import TrainStep, make_train_step

REPORT_OVERRIDES = (
    "data.loader=torch", "data.num_workers=0", "data.normalize=unit",
    "optimizer=adam", "optimizer.lr=0.0002", "optimizer.fused=null", "optimizer.foreach=null",
    "device.compile=false", "device.amp=null", "device.channels_last=false",
    "device.cudnn_benchmark=false", "device.cuda_graphs=false", "device.num_threads=null",
)
FASTEST_CUDA_OVERRIDES = (
    "optimizer.fused=true", "device.amp=bf16", "device.channels_last=true",
    "device.cudnn_benchmark=true", "device.cuda_graphs=true", "device.compile=false",
)
PATHS = ("report", "default", "fastest")


@dataclass
class Setup:
    """One path for one model: its config, data and training step, and its timings."""

    name: str
    cfg: DictConfig
    splits: MNISTSplits
    step: TrainStep
    warmup_s: float = 0.0
    train_s: list[float] = field(default_factory=list)
    val_s: list[float] = field(default_factory=list)


@dataclass
class Row:
    model: str
    path: str
    train_s: float
    train_min_s: float
    images_per_s: float
    val_s: float
    overhead_s: float
    speedup: float

    def cells(self) -> list[str]:
        return [self.model, self.path, f"{self.train_s:.3f}", f"{self.train_min_s:.3f}",
                f"{self.images_per_s:,.0f}", f"{self.val_s:.3f}", f"{self.overhead_s:.1f}",
                f"{self.speedup:.2f}"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME: key=value key=value"`` into a name and its Hydra overrides."""
    name, sep, overrides = text.partition(":")
    if not sep or not name.strip() or not overrides.strip():
        raise argparse.ArgumentTypeError(f"expected 'NAME: key=value ...', got {text!r}")
    return name.strip(), shlex.split(overrides)


def compose_config(overrides: list[str]) -> DictConfig:
    """The config ``python -m mnist_bench OVERRIDES`` would run with."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    problems = config_problems(cfg)
    if problems:
        raise SystemExit("invalid overrides " + " ".join(overrides) + ":\n  "
                         + "\n  ".join(problems))
    return cfg


def path_overrides(args: argparse.Namespace, model: str) -> dict[str, list[str]]:
    """Hydra overrides of every path to time for ``model``, in table order."""
    common = [f"model={model}", f"device={args.device}", f"data.root={args.data_root}",
              f"trainer.batch_size={args.batch_size}"]
    if args.max_train_samples:
        common.append(f"data.max_train_samples={args.max_train_samples}")
    named = {"report": [*REPORT_OVERRIDES, f"trainer.eval_batch_size={args.batch_size}"],
             "default": [], "fastest": list(FASTEST_CUDA_OVERRIDES)}
    paths = {name: common + named[name] for name in args.paths}
    paths |= {name: common + overrides for name, overrides in args.variant}
    return paths


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read afterwards covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def build_setup(name: str, cfg: DictConfig, device: torch.device) -> Setup:
    torch.manual_seed(cfg.trainer.seed)  # every path starts from the same weights
    splits = build_splits(cfg.data, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, device,
                          cfg.trainer.seed)
    model, step_model = prepare_model(build(cfg.model, "model"), device, cfg.device)
    optimizer = build(cfg.optimizer, "optimizer")(model.parameters())
    return Setup(name, cfg, splits, make_train_step(model, step_model, optimizer, device,
                                                    cfg.device))


def time_epoch(setup: Setup, device: torch.device, progress: bool) -> tuple[float, float]:
    """Seconds of one training epoch and of one validation pass."""
    apply_device_settings(setup.cfg.device)
    synchronize(device)
    start = time.perf_counter()
    train_epoch(setup.step, setup.splits.train, epoch=1, desc=setup.name,
                refresh_every=setup.cfg.trainer.log_every_n_steps, progress=progress)
    synchronize(device)
    trained = time.perf_counter()
    evaluate(setup.step.step_model, setup.splits.val, device, setup.cfg.device)
    synchronize(device)
    return trained - start, time.perf_counter() - trained


def bench_model(args: argparse.Namespace, model: str, device: torch.device) -> list[Row]:
    setups = [build_setup(name, compose_config(overrides), device)
              for name, overrides in path_overrides(args, model).items()]
    for setup in setups:
        setup.warmup_s = sum(time_epoch(setup, device, args.progress))
        print(f"  {model} {setup.name}: warm-up epoch {setup.warmup_s:.2f} s", flush=True)
    for repeat in range(args.repeats):
        shift = repeat % len(setups)  # rotate the order: no path always runs first
        for setup in setups[shift:] + setups[:shift]:
            train_s, val_s = time_epoch(setup, device, args.progress)
            setup.train_s.append(train_s)
            setup.val_s.append(val_s)
        print(f"  {model}: repeat {repeat + 1}/{args.repeats} done", flush=True)
    apply_device_settings(setups[0].cfg.device)
    reference = statistics.median(setups[0].train_s)
    rows = []
    for setup in setups:
        train_s, val_s = statistics.median(setup.train_s), statistics.median(setup.val_s)
        rows.append(Row(model, setup.name, train_s, min(setup.train_s),
                        setup.splits.n_train / train_s, val_s,
                        setup.warmup_s - train_s - val_s, reference / train_s))
    return rows


def describe_machine(device: torch.device) -> list[str]:
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return [
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"device: {device} ({hardware}); {os.cpu_count()} CPU cores; "
        f"torch default threads {torch.get_num_threads()}",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}",
        f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "command: " + shlex.join(["python", "-m", "mnist_bench.bench", *sys.argv[1:]]),
    ]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(rows: list[Row], header: list[str], first_path: str) -> str:
    columns = ["model", "path", "train s (median)", "train s (min)", "images/s",
               "val s (median)", "overhead s", f"x {first_path}"]
    lines = [f"- {line}" for line in header] + [""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(Row.__dataclass_fields__))
        for row in rows:
            writer.writerow(list(vars(row).values()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_bench.bench",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="Paths: report = the report's DataLoader/ToTensor setup (a); default = what "
               "'python -m mnist_bench' runs by default (b); fastest = CUDA only (c). "
               "Speedups are relative to the first path in the table. "
               "Example: python -m mnist_bench.bench --models mlp lenet --repeats 5 "
               "--variant 'threads1: device.num_threads=1' --output bench.md",
    )
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "resnet18"],
                        choices=list(MODEL_SCHEMAS), help="models to time (default: %(default)s)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                        help="paths to time, in table order (default: report default, plus "
                             "fastest on CUDA)")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[],
                        metavar="'NAME: KEY=VALUE ...'",
                        help="also time the default path with these Hydra overrides; repeatable")
    parser.add_argument("--device", default="auto", choices=[d.value for d in DeviceType],
                        help="the device config group to use (default: %(default)s, as "
                             "python -m mnist_bench)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="training batch size (default: %(default)s, the report's)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed epochs per path; the table shows the median "
                             "(default: %(default)s)")
    parser.add_argument("--max-train-samples", type=int, default=None, metavar="N",
                        help="train on the first N images of the training split only "
                             "(quick checks; default: all 55,000)")
    parser.add_argument("--data-root", default=os.environ.get("MNIST_DATA_ROOT", "data"),
                        help="folder holding MNIST/raw/ (default: $MNIST_DATA_ROOT, else "
                             "data; now %(default)s)")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="also write the results to FILE: .csv for CSV, else markdown")
    parser.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    args = parser.parse_args(argv)
    sizes = [args.repeats, args.batch_size]
    if args.max_train_samples is not None:
        sizes.append(args.max_train_samples)
    if min(sizes) < 1:
        parser.error("--repeats, --batch-size and --max-train-samples must be >= 1")
    names = [name for name, _ in args.variant]
    taken = sorted({name for name in names if name in PATHS or names.count(name) > 1})
    if taken:
        parser.error(f"--variant names must differ from each other and from the paths "
                     f"({', '.join(PATHS)}): {', '.join(taken)}")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    register_configs()
    try:
        device = resolve_device(args.device)
    except RuntimeError as err:
        raise SystemExit(str(err).replace("device=", "--device ")) from None
    if args.paths is None:
        args.paths = list(PATHS if device.type == "cuda" else PATHS[:2])
    if "fastest" in args.paths and device.type != "cuda":
        raise SystemExit("the fastest path needs CUDA (it uses CUDA graphs)")
    rows = []
    for model in args.models:
        try:
            rows += bench_model(args, model, device)
        except DataError as err:
            raise SystemExit(str(err).replace("data.root=", "--data-root ")) from None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = markdown(rows, describe_machine(device), args.paths[0])
    print(table, end="")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.output.suffix == ".csv":
            write_csv(args.output, rows)
        else:
            args.output.write_text(table)
    return rows


if __name__ == "__main__":
    main()
