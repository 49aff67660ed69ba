"""Typed configuration: the schemas Hydra validates against, and the value checks run before
anything is trained or tracked.

Each option of the ``model`` and ``optimizer`` groups extends its schema, registered here in
Hydra's ConfigStore (``conf/model/mlp.yaml`` starts with ``defaults: [mlp_schema]``), so a wrong
type or an unknown key is refused while Hydra composes; closed choices are ``Enum`` fields.
What a type cannot say (``lr > 0``, ``epochs >= 1`` ...) :func:`config_problems` checks, one
line per problem. :func:`build` instantiates only the project's own classes: a model or
optimizer node must match the schema its ``name`` selects, ``_target_`` included, so neither a
command line nor a stored ``config.yaml`` can make it call anything else.

This module imports neither torch nor MLflow, so a config error costs no more than Hydra.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_bench.cli import CONF_DIR

MNIST_TRAIN_SIZE = 60_000
MAX_SEED = 2**32 - 1  # numpy's limit


class Choice(str, Enum):
    """A closed set of strings: compares equal to its value and prints as it."""

    def __str__(self) -> str:
        return self.value


def choice(name: str, *values: str, module: str = __name__) -> type[Choice]:
    """A :class:`Choice` whose members are named by their values; ``module`` is where it is
    defined, so that its members pickle (a process launcher pickles the config)."""
    return Choice(name, [(value, value) for value in values], module=module, qualname=name)


Loader = choice("Loader", "tensor", "torch")
Normalize = choice("Normalize", "unit", "standard")
DeviceType = choice("DeviceType", "auto", "cpu", "cuda", "mps")
Amp = choice("Amp", "bf16", "fp16")
Activation = choice("Activation", "sigmoid", "relu")
Pool = choice("Pool", "avg", "max")
ResNetStem = choice("ResNetStem", "imagenet", "small")
GoogLeNetStem = choice("GoogLeNetStem", "gray", "rgb")
Schedule = choice("Schedule", "none", "onecycle", "cosine")


@dataclass
class MLPConf:
    _target_: str = "mnist_bench.models.mlp.MLP"
    name: str = "mlp"
    hidden: Any = field(default_factory=lambda: [128, 32])  # checked by config_problems
    dropout: float = 0.0


@dataclass
class LeNetConf:
    _target_: str = "mnist_bench.models.lenet.LeNet5"
    name: str = "lenet"
    activation: Activation = Activation.sigmoid
    pool: Pool = Pool.avg
    batch_norm: bool = False


@dataclass
class ResNet18Conf:
    _target_: str = "mnist_bench.models.resnet.resnet18_mnist"
    name: str = "resnet18"
    stem: ResNetStem = ResNetStem.imagenet


@dataclass
class GoogLeNetConf:
    _target_: str = "mnist_bench.models.googlenet.GoogLeNetMNIST"
    name: str = "googlenet"
    stem: GoogLeNetStem = GoogLeNetStem.gray
    aux_weight: float = 0.3


@dataclass
class SmallCNNConf:
    _target_: str = "mnist_bench.models.smallcnn.SmallCNN"
    name: str = "smallcnn"
    width: int = 24


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
    _target_: str = "torch.optim.Adam"
    name: str = "adam"
    betas: Any = field(default_factory=lambda: [0.9, 0.999])  # checked by config_problems
    eps: float = 1e-8


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    name: str = "adamw"


@dataclass
class SGDConf(OptimizerConf):
    _target_: str = "torch.optim.SGD"
    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class DeviceConf:
    """Where to train, and the speed levers that suit that device."""

    type: DeviceType = DeviceType.auto
    compile: bool = False
    compile_mode: str | None = None
    amp: Amp | None = None
    channels_last: bool = False
    cudnn_benchmark: bool = False
    cuda_graphs: bool = False
    num_threads: int | None = None


@dataclass
class DataConf:
    root: str = "data"
    val_size: int = 5_000
    split_seed: int = 0
    normalize: Normalize = Normalize.unit
    loader: Loader = Loader.tensor
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
    label_smoothing: float = 0.0
    schedule: Schedule = Schedule.none
    warmup_epochs: float = 0.0


@dataclass
class AugmentConf:
    rotation: float = 0.0   # degrees, each way
    scale: float = 0.0      # zoom 1 ± scale
    translate: float = 0.0  # shift, as a fraction of the image's side, each way


@dataclass
class TrackingConf:
    uri: str | None = None
    experiment: str = "mnist_bench"
    run_name: str | None = None
    sweep_id: str | None = None
    log_model: bool = True
    label: str | None = None


@dataclass
class SearchConf:
    """Set by ``hydra/sweeper=optuna`` for each trial's job; null outside a search."""

    study: str | None = None
    trial: int | None = None


@dataclass
class Config:
    model: Any = MISSING
    optimizer: Any = MISSING
    device: DeviceConf = field(default_factory=DeviceConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    augment: AugmentConf = field(default_factory=AugmentConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    search: SearchConf = field(default_factory=SearchConf)
    resume: str | None = None


MODEL_SCHEMAS: dict[str, type] = {
    "mlp": MLPConf,
    "lenet": LeNetConf,
    "resnet18": ResNet18Conf,
    "googlenet": GoogLeNetConf,
    "smallcnn": SmallCNNConf,
}
OPTIMIZER_SCHEMAS: dict[str, type] = {"adam": AdamConf, "adamw": AdamWConf, "sgd": SGDConf}
GROUP_SCHEMAS = {"model": MODEL_SCHEMAS, "optimizer": OPTIMIZER_SCHEMAS}
BATCH_NORM_MODELS = ("resnet18", "googlenet", "smallcnn")


def register_configs() -> None:
    """The top-level schema (first in ``conf/config.yaml``'s defaults) and one schema per option
    of the model and optimizer groups (first in each option's defaults); ``--help`` lists the
    options through the ``mnist_bench_groups`` resolver, sweep folders end in ``launch_id``."""
    OmegaConf.register_new_resolver("mnist_bench_groups", lambda: group_options(CONF_DIR),
                                    replace=True)
    # Cached in the config, and Hydra copies that cache into every job's config (as for
    # ${now:}): one value per launch, shared by its jobs, also in other processes.
    OmegaConf.register_new_resolver("launch_id", lambda: secrets.token_hex(3), use_cache=True,
                                    replace=True)
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=group, name=f"{name}_schema", node=schema)


def group_options(conf_dir: str | Path) -> str:
    """``group: option, ...`` per line for ``--help``, from the YAML files only (the schemas
    registered beside them are not options)."""
    groups = sorted(p for p in Path(conf_dir).iterdir() if p.is_dir() and p.name != "hydra")
    return "\n".join(f"{g.name}: {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}"
                     for g in groups)


def group_node_problems(node: Any, group: str) -> list[str]:
    """Why ``node`` is not a valid option of ``group`` (``model`` or ``optimizer``): an unknown
    name, a ``_target_`` other than its schema's, unknown keys, wrong types, missing values."""
    schemas = GROUP_SCHEMAS[group]
    name = OmegaConf.select(node, "name", default=None) if isinstance(node, DictConfig) else None
    if name not in schemas:
        return [f"{group}.name={name!r}: unknown; allowed: {', '.join(schemas)}"]
    schema = OmegaConf.structured(schemas[name])
    target = node.get("_target_")
    if target != schema._target_:
        return [f"{group}._target_={target!r}: {group}={name} must build {schema._target_}; "
                "other targets are refused"]
    try:
        merged = OmegaConf.merge(schema, node)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        return [f"{group}.{key}: {getattr(err, 'msg', err)}".splitlines()[0]]
    return _missing_problems(sorted(f"{group}.{k}" for k in OmegaConf.missing_keys(merged)))


def build(node: DictConfig, group: str) -> Any:
    """Instantiate a model or optimizer node that :func:`group_node_problems` accepts, dropping
    the ``name`` key that only labels the option. Raises ``ValueError`` otherwise."""
    from hydra.utils import instantiate

    problems = group_node_problems(node, group)
    if problems:
        raise ValueError("; ".join(problems))
    return instantiate(OmegaConf.create({k: v for k, v in node.items() if k != "name"}))


def _missing_problems(keys: list[str]) -> list[str]:
    return [f"{key}: required value is missing (set it on the command line)" for key in keys]


def compile_modes() -> list[str]:
    """The ``torch.compile`` modes of the installed torch (they vary between releases)."""
    import torch._inductor  # torch.compile documents this call

    return sorted(torch._inductor.list_mode_options())


def _is_number_list(value: Any, length: int | None = None) -> bool:
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else None
    return (items is not None and (length is None or len(items) == length)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items))


def _model_checks(model: DictConfig) -> list[tuple[str, Any, bool, str]]:
    if model.name == "smallcnn":
        return [("model.width", model.width, model.width >= 1, "an integer >= 1")]
    if model.name != "mlp":
        return []
    hidden = model.hidden
    ok = _is_number_list(hidden) and all(isinstance(h, int) and h >= 1 for h in hidden)
    return [("model.hidden", hidden, ok, "a list of layer widths, integers >= 1, e.g. [128,32]"),
            ("model.dropout", model.dropout, 0 <= model.dropout < 1, "a number in [0, 1)")]


def _recipe_checks(cfg: DictConfig) -> list[tuple[str, Any, bool, str]]:
    trainer, augment = cfg.trainer, cfg.augment
    return [
        ("trainer.label_smoothing", trainer.label_smoothing, 0 <= trainer.label_smoothing < 1,
         "a number in [0, 1)"),
        ("trainer.warmup_epochs", trainer.warmup_epochs,
         trainer.warmup_epochs == 0 or 0 < trainer.warmup_epochs < trainer.epochs,
         "a number >= 0 and below trainer.epochs"),
        ("augment.rotation", augment.rotation, 0 <= augment.rotation <= 180,
         "degrees in [0, 180]"),
        ("augment.scale", augment.scale, 0 <= augment.scale < 1, "a number in [0, 1)"),
        ("augment.translate", augment.translate, 0 <= augment.translate <= 0.5,
         "a fraction of the image's side in [0, 0.5]"),
    ]


def _optimizer_checks(opt: DictConfig) -> list[tuple[str, Any, bool, str]]:
    checks = [
        ("optimizer.lr", opt.lr, math.isfinite(opt.lr) and opt.lr > 0, "a finite number > 0"),
        ("optimizer.weight_decay", opt.weight_decay, opt.weight_decay >= 0, "a number >= 0"),
    ]
    if "betas" in opt:
        ok = _is_number_list(opt.betas, 2) and all(0 <= b < 1 for b in opt.betas)
        checks.append(("optimizer.betas", opt.betas, ok, "two numbers in [0, 1), e.g. [0.9,0.999]"))
        checks.append(("optimizer.eps", opt.eps, opt.eps > 0, "a number > 0"))
    if "momentum" in opt:
        checks.append(("optimizer.momentum", opt.momentum, 0 <= opt.momentum < 1,
                       "a number in [0, 1)"))
    return checks


def _batch_norm_checks(cfg: DictConfig) -> list[tuple[str, Any, bool, str]]:
    """BatchNorm cannot train on a batch of one image (ResNet-18's and GoogLeNet's 1x1 maps)."""
    if cfg.model.name not in BATCH_NORM_MODELS and not cfg.model.get("batch_norm"):
        return []
    why = f"at least 2 with model={cfg.model.name}: BatchNorm cannot train on one image"
    # only 1 is checked here: 0 and below are range problems of their own
    return [("trainer.batch_size", cfg.trainer.batch_size, cfg.trainer.batch_size != 1, why),
            ("data.max_train_samples", cfg.data.max_train_samples,
             cfg.data.max_train_samples != 1, f"null or {why}")]


def _range_checks(cfg: DictConfig) -> list[tuple[str, Any, bool, str]]:
    trainer, data, device = cfg.trainer, cfg.data, cfg.device
    modes = compile_modes() if device.compile_mode is not None else []
    return [
        ("trainer.epochs", trainer.epochs, trainer.epochs >= 1, "an integer >= 1"),
        ("trainer.batch_size", trainer.batch_size, trainer.batch_size >= 1, "an integer >= 1"),
        ("trainer.eval_batch_size", trainer.eval_batch_size, trainer.eval_batch_size >= 1,
         "an integer >= 1"),
        ("trainer.seed", trainer.seed, 0 <= trainer.seed <= MAX_SEED,
         f"an integer in 0..{MAX_SEED}"),
        ("trainer.log_every_n_steps", trainer.log_every_n_steps, trainer.log_every_n_steps >= 1,
         "an integer >= 1"),
        ("data.val_size", data.val_size, 0 < data.val_size < MNIST_TRAIN_SIZE,
         f"an integer in 1..{MNIST_TRAIN_SIZE - 1}"),
        ("data.num_workers", data.num_workers, data.num_workers >= 0, "an integer >= 0"),
        ("data.max_train_samples", data.max_train_samples,
         data.max_train_samples is None or data.max_train_samples >= 1, "null or an integer >= 1"),
        ("device.compile_mode", device.compile_mode,
         device.compile_mode is None or device.compile_mode in modes,
         f"null or one of {', '.join(modes)}"),
        ("device.num_threads", device.num_threads,
         device.num_threads is None or device.num_threads >= 1,
         "null (all cores) or an integer >= 1"),
        ("tracking.sweep_id", cfg.tracking.sweep_id,  # it goes into MLflow search filters
         cfg.tracking.sweep_id is None or "'" not in cfg.tracking.sweep_id,
         "null or a name without a quote (')"),
    ]


def _unknown_keys(cfg: DictConfig) -> list[str]:
    known = {f.name for f in fields(Config)}
    return [f"{key}: unknown key (a typo, or a '+' override?); known: {', '.join(sorted(known))}"
            for key in cfg if key not in known]


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem with ``cfg``, one line each (key, value, what is allowed); empty if valid."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        return _missing_problems(missing)
    problems = (_unknown_keys(cfg) + group_node_problems(cfg.model, "model")
                + group_node_problems(cfg.optimizer, "optimizer"))
    if problems:
        return problems
    checks = (_model_checks(cfg.model) + _optimizer_checks(cfg.optimizer) + _range_checks(cfg)
              + _recipe_checks(cfg) + _batch_norm_checks(cfg))
    return [f"{key}={value!r}: must be {allowed}" for key, value, ok, allowed in checks if not ok]
