"""Typed configuration: the schema Hydra validates against, and value checks run before training.

Types are enforced by OmegaConf structured configs (a wrong type is rejected while Hydra composes
the config). Values that a type cannot express (``lr > 0``, ``epochs >= 1`` ...) are checked by
:func:`config_problems`, which returns one readable line per problem so that the entry point can
print them all and exit before any MLflow run exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

MNIST_TRAIN_SIZE = 60_000
DATA_LOADERS = ("tensor", "torch")
NORMALIZATIONS = ("unit", "standard")
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")
AMP_DTYPES = ("bf16", "fp16")
MAX_SEED = 2**32 - 1  # numpy's limit


@dataclass
class MLPConf:
    _target_: str = "mnist_bench.models.mlp.MLP"
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128, 32])


@dataclass
class LeNetConf:
    _target_: str = "mnist_bench.models.lenet.LeNet5"
    name: str = "lenet"
    activation: str = "sigmoid"
    pool: str = "avg"


@dataclass
class ResNet18Conf:
    _target_: str = "mnist_bench.models.resnet.resnet18_mnist"
    name: str = "resnet18"
    stem: str = "imagenet"


@dataclass
class GoogLeNetConf:
    _target_: str = "mnist_bench.models.googlenet.GoogLeNetMNIST"
    name: str = "googlenet"
    stem: str = "gray"
    aux_weight: float = 0.3


@dataclass
class OptimizerConf:
    """Common optimizer fields. ``fused``/``foreach`` select torch's multi-tensor kernels."""

    _target_: str = MISSING
    _partial_: bool = True
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0
    fused: bool | None = None
    foreach: bool | None = None


@dataclass
class AdamConf(OptimizerConf):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SGDConf(OptimizerConf):
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class DeviceConf:
    """Where to train, and the speed levers that suit that device."""

    type: str = "auto"
    compile: bool = False
    compile_mode: str | None = None
    amp: str | None = None
    channels_last: bool = False
    cudnn_benchmark: bool = False
    cuda_graphs: bool = False
    num_threads: int | None = None


@dataclass
class DataConf:
    root: str = "data"
    val_size: int = 5_000
    split_seed: int = 0
    normalize: str = "unit"
    loader: str = "tensor"
    num_workers: int = 0
    max_train_samples: int | None = None
    verify_md5: bool = True


@dataclass
class TrainerConf:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1_024
    seed: int = 42
    deterministic: bool = False
    test_every_epoch: bool = False
    log_every_n_steps: int = 50


@dataclass
class TrackingConf:
    uri: str | None = None
    experiment: str = "mnist_bench"
    run_name: str | None = None
    sweep_id: str | None = None
    log_model: bool = True


@dataclass
class Config:
    model: Any = MISSING
    optimizer: Any = MISSING
    device: DeviceConf = field(default_factory=DeviceConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    resume: str | None = None


MODEL_SCHEMAS: dict[str, type] = {
    "mlp": MLPConf,
    "lenet": LeNetConf,
    "resnet18": ResNet18Conf,
    "googlenet": GoogLeNetConf,
}
OPTIMIZER_SCHEMAS: dict[str, type] = {"adam": AdamConf, "adamw": AdamConf, "sgd": SGDConf}
MODEL_CHOICES = {"lenet.activation": ("sigmoid", "relu"), "lenet.pool": ("avg", "max"),
                 "resnet18.stem": ("imagenet", "small"), "googlenet.stem": ("gray", "rgb")}


def register_configs() -> None:
    """Register the top-level schema; ``conf/config.yaml`` lists it first in its defaults."""
    ConfigStore.instance().store(name="base_config", node=Config)


def build(node: DictConfig) -> Any:
    """Instantiate a ``_target_`` node, dropping the ``name`` key that only labels the option."""
    kwargs = {k: v for k, v in node.items() if k != "name"}
    return instantiate(OmegaConf.create(kwargs))


def _missing_problems(keys: list[str]) -> list[str]:
    return [f"{key}: required value is missing (set it on the command line)" for key in keys]


def _check_against_schema(node: Any, schemas: dict[str, type], key: str) -> list[str]:
    """Unknown option names, wrong types, and schema fields that the option leaves unset."""
    name = OmegaConf.select(node, "name", default=None)
    if name not in schemas:
        return [f"{key}.name={name!r}: unknown; allowed: {', '.join(schemas)}"]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schemas[name]), node)
    except OmegaConfBaseException as err:
        bad_key = getattr(err, "full_key", None) or "?"
        return [f"{key}.{bad_key}: {err.msg if hasattr(err, 'msg') else err}".splitlines()[0]]
    return _missing_problems(sorted(f"{key}.{k}" for k in OmegaConf.missing_keys(merged)))


def compile_modes() -> list[str]:
    """The ``torch.compile`` modes of the installed torch (they vary between releases)."""
    import torch._inductor  # already imported with torchvision; torch.compile documents this call

    return sorted(torch._inductor.list_mode_options())


def _range_problems(cfg: DictConfig) -> list[str]:
    modes = compile_modes()
    checks: list[tuple[str, Any, bool, str]] = [
        ("trainer.epochs", cfg.trainer.epochs, cfg.trainer.epochs >= 1, "an integer >= 1"),
        ("trainer.batch_size", cfg.trainer.batch_size, cfg.trainer.batch_size >= 1,
         "an integer >= 1"),
        ("trainer.eval_batch_size", cfg.trainer.eval_batch_size, cfg.trainer.eval_batch_size >= 1,
         "an integer >= 1"),
        ("data.val_size", cfg.data.val_size, 0 < cfg.data.val_size < MNIST_TRAIN_SIZE,
         f"an integer in 1..{MNIST_TRAIN_SIZE - 1}"),
        ("data.num_workers", cfg.data.num_workers, cfg.data.num_workers >= 0,
         "an integer >= 0"),
        ("data.loader", cfg.data.loader, cfg.data.loader in DATA_LOADERS,
         f"one of {', '.join(DATA_LOADERS)}"),
        ("data.normalize", cfg.data.normalize, cfg.data.normalize in NORMALIZATIONS,
         f"one of {', '.join(NORMALIZATIONS)}"),
        ("data.max_train_samples", cfg.data.max_train_samples,
         cfg.data.max_train_samples is None or cfg.data.max_train_samples >= 1,
         "null or an integer >= 1"),
        ("device.type", cfg.device.type, cfg.device.type in DEVICE_TYPES,
         f"one of {', '.join(DEVICE_TYPES)}"),
        ("device.amp", cfg.device.amp, cfg.device.amp is None or cfg.device.amp in AMP_DTYPES,
         f"null or one of {', '.join(AMP_DTYPES)}"),
        ("device.compile_mode", cfg.device.compile_mode,
         cfg.device.compile_mode is None or cfg.device.compile_mode in modes,
         f"null or one of {', '.join(modes)}"),
        ("device.num_threads", cfg.device.num_threads,
         cfg.device.num_threads is None or cfg.device.num_threads >= 1,
         "null (all cores) or an integer >= 1"),
        ("trainer.seed", cfg.trainer.seed, 0 <= cfg.trainer.seed <= MAX_SEED,
         f"an integer in 0..{MAX_SEED}"),
        ("trainer.log_every_n_steps", cfg.trainer.log_every_n_steps,
         cfg.trainer.log_every_n_steps >= 1, "an integer >= 1"),
    ]
    return [f"{key}={value!r}: must be {allowed}" for key, value, ok, allowed in checks if not ok]


def _choice_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for dotted, allowed in MODEL_CHOICES.items():
        model_name, attr = dotted.split(".")
        value = cfg.model.get(attr) if cfg.model.get("name") == model_name else None
        if value is not None and value not in allowed:
            problems.append(f"model.{attr}={value!r}: must be one of {', '.join(allowed)}")
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr > 0):
        problems.append(f"optimizer.lr={lr!r}: must be a finite number > 0")
    return problems


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem with ``cfg``, one line each (key, value, what is allowed); empty if valid."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        return _missing_problems(missing)
    return (_check_against_schema(cfg.model, MODEL_SCHEMAS, "model")
            + _check_against_schema(cfg.optimizer, OPTIMIZER_SCHEMAS, "optimizer")
            + _range_problems(cfg) + _choice_problems(cfg))
