"""Every option of every config group composes and instantiates, through Hydra's compose API."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mnist_bench.config import build, config_problems, register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert group_options("model") == ["googlenet", "lenet", "mlp", "resnet18", "smallcnn"]
    assert group_options("optimizer") == ["adam", "adamw", "sgd"]
    assert group_options("device") == ["auto", "cpu", "cuda", "mps"]
    assert group_options("data") == ["mnist"]


def test_defaults_are_the_reports():
    cfg = compose_cfg()
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == pytest.approx(2e-4)
    assert cfg.trainer.batch_size == 64 and cfg.trainer.epochs == 10
    assert cfg.data.val_size == 5000 and cfg.data.normalize == "unit"
    assert config_problems(cfg) == []


@pytest.mark.parametrize("model", ["googlenet", "lenet", "mlp", "resnet18", "smallcnn"])
def test_every_model_option_instantiates(model):
    cfg = compose_cfg(f"model={model}")
    assert config_problems(cfg) == []
    net = build(cfg.model, "model").eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_option_instantiates(optimizer):
    cfg = compose_cfg(f"optimizer={optimizer}", "optimizer.lr=0.05")
    assert config_problems(cfg) == []
    opt = build(cfg.optimizer, "optimizer")([torch.nn.Parameter(torch.zeros(3))])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "mps"])
def test_every_device_option_composes(device):
    cfg = compose_cfg(f"device={device}")
    assert cfg.device.type == device and config_problems(cfg) == []


def test_wrong_type_is_rejected_while_composing():
    with pytest.raises(Exception, match="trainer.epochs"):
        compose_cfg("trainer.epochs=ten")


def test_value_problems_are_reported_one_per_line():
    cfg = compose_cfg("trainer.epochs=0", "optimizer.lr=-1", "data.val_size=0")
    problems = config_problems(cfg)
    assert len(problems) == 3
    assert any(p.startswith("trainer.epochs=0") for p in problems)
    assert any(p.startswith("optimizer.lr=-1") for p in problems)
    assert any(p.startswith("data.val_size=0") and "1..59999" in p for p in problems)


def test_build_refuses_a_stored_node_with_another_target(tmp_path):
    marker = tmp_path / "opened"
    node = OmegaConf.create({"_target_": "builtins.open", "name": "mlp", "file": str(marker),
                             "mode": "w"})
    with pytest.raises(ValueError, match="model._target_='builtins.open'"):
        build(node, "model")
    assert not marker.exists()
    node = OmegaConf.create({"_target_": "mnist_bench.models.mlp.MLP", "name": "mlp",
                             "hidden": [16], "extra": 1})
    with pytest.raises(ValueError, match="model.extra"):
        build(node, "model")


def test_experiment_preset_encodes_the_paper_grid():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=paper_lr_sweep"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params == {"model": "mlp,lenet,resnet18", "optimizer.lr": "0.02,0.01,0.0002,0.0001"}
    assert cfg.trainer.batch_size == 64 and cfg.trainer.epochs == 10
