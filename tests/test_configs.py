"""Every config file parses into a full config and its model and data module instantiate."""

from pathlib import Path

import pytest
import yaml

from imagenet_cls.data.datamodule import ImageNetDataModule
from imagenet_cls.model.module import ClassificationModel

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))


def test_there_are_configs_for_the_main_families():
    names = {p.stem for p in CONFIGS}
    assert {"resnet", "demo", "efficientnet", "efficientnet_lite0", "convnext", "vit", "mobilenet"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_prints_and_instantiates(config, capsys):
    from imagenet_cls.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    full = yaml.safe_load(capsys.readouterr().out)
    assert {"trainer", "model", "data", "seed_everything"} <= set(full)
    monitors = [c["init_args"].get("monitor") for c in full["trainer"]["callbacks"] if "init_args" in c]
    assert "val_acc" in monitors
    model_args = {**full["model"], "num_classes": full["model"]["num_classes"]}
    model = ClassificationModel(**model_args)
    assert model.hparams.model_name == full["model"]["model_name"]
    data = ImageNetDataModule(**full["data"])
    assert data.batch_size == full["data"]["batch_size"]
