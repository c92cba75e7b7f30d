"""params.yaml through flowerlab.config: defaults load, and every bad key, type or value is named."""

from __future__ import annotations

from enum import Enum

import pytest
import yaml
from omegaconf import OmegaConf

from flowerlab.config import ConfigError, Params, Source, VaeLoss, load_params
from tests.datasets import REPO, param_leaves, write_params


def test_repo_params_load_with_the_values_in_the_file():
    params = load_params(REPO / "params.yaml")
    in_file = dict(param_leaves(yaml.safe_load((REPO / "params.yaml").read_text())))
    schema = dict(param_leaves(OmegaConf.to_container(OmegaConf.structured(Params))))
    assert set(in_file) == set(schema)  # every param is written out, so DVC tracks it
    for dotted, expected in in_file.items():
        value = params
        for part in dotted.split("."):
            value = getattr(value, part)
        if isinstance(value, Enum):
            value = value.value
        assert value == expected, dotted
    assert isinstance(params.data.source, Source)
    assert isinstance(params.vae.loss, VaeLoss)
    assert isinstance(params.lr, float)


def test_missing_keys_take_the_schema_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("epochs: 3\ndata:\n  source: imagefolder\n")
    params = load_params(path)
    defaults = Params()
    assert params.epochs == 3
    assert params.data.source is Source.imagefolder
    assert params.data.image_size == defaults.data.image_size
    assert params.split == defaults.split
    assert params.vae == defaults.vae


@pytest.mark.parametrize(("overrides", "key"), [
    ({"data.sourse": "synthetic"}, "data.sourse"),  # wrong key
    ({"epoch": 3}, "epoch"),  # wrong top-level key
    ({"epochs": "abc"}, "epochs"),  # wrong type
    ({"seed": 1.5}, "seed"),
    ({"data.download": "maybe"}, "data.download"),
    ({"data.source": "foo"}, "data.source"),  # wrong value
    ({"vae.loss": "l1"}, "vae.loss"),
    ({"split.val_fraction": 1.5}, "split.val_fraction"),
    ({"split.test_fraction": 0.0}, "split.test_fraction"),
    ({"split.val_fraction": 0.5, "split.test_fraction": 0.5}, "split.val_fraction"),
    ({"lr": -0.004}, "lr"),
    ({"vae.lr": 0}, "vae.lr"),
    ({"seed": -1}, "seed"),
    ({"data.image_size": 8}, "data.image_size"),
    ({"data.samples_per_class": 0}, "data.samples_per_class"),
    ({"vae.image_size": 20}, "vae.image_size"),
    ({"train.precision": "fp8"}, "train.precision"),
    ({"train.profiler": "fancy"}, "train.profiler"),
    ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
    ({"model.backbone_lr_scale": 0.0}, "model.backbone_lr_scale"),
    ({"model.backbone_lr_scale": 2.0}, "model.backbone_lr_scale"),
    ({"model.freeze_epochs": -1}, "model.freeze_epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 1}, "batch_size"),  # BatchNorm: it failed in training with torch's wording
    ({"vae.batch_size": 1}, "vae.batch_size"),
    ({"data.image_size": 10000}, "data.image_size"),  # a 7.2 GB store, then killed for memory
    ({"vae.image_size": 2048}, "vae.image_size"),
    ({"lr": float("nan")}, "lr"),  # nan passes every comparison: it trained a NaN model
    ({"lr": float("inf")}, "lr"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay"),
    ({"vae.beta": float("nan")}, "vae.beta"),
    ({"train.augment": "heavy"}, "train.augment"),
    ({"train.export": "newest"}, "train.export"),
    ({"train.mix": 1.5}, "train.mix"),
])
def test_bad_params_raise_config_error_naming_the_key(tmp_path, overrides, key):
    path = write_params(tmp_path, overrides)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert f"'{key}'" in message
    assert "\n" not in message
    if overrides in ({"data.sourse": "synthetic"}, {"epoch": 3}):
        assert f"bad key '{key}'" in message
    if overrides in ({"epochs": "abc"}, {"data.source": "foo"}):  # the key is right, its value not
        assert f"bad value for '{key}'" in message


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 42\ndata: [synthetic\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_params(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_params_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
