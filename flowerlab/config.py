"""The one typed view of params.yaml: OmegaConf checks keys and types, validators check values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from flowerlab.errors import ConfigError


class Source(str, Enum):
    synthetic = "synthetic"
    flowers102 = "flowers102"
    imagefolder = "imagefolder"
    tensors = "tensors"


class VaeLoss(str, Enum):
    mse = "mse"
    ssim = "ssim"


# Defaults are params.yaml's values (tests/test_contracts.py checks it), so a params file that
# leaves a key out behaves as the committed one.
@dataclass
class DataParams:
    source: Source = Source.synthetic
    path: str = "data/raw"
    image_size: int = 32
    samples_per_class: int = 80  # synthetic source only
    download: bool = True  # flowers102 only: try to download when the files are missing
    labels_csv: str = "labels.csv"  # tensors source only, relative to path


@dataclass
class SplitParams:
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    use_official: bool = True  # use the source's own split when it has one


@dataclass
class ModelParams:
    pretrained: bool = False
    weights_path: str | None = None  # local ImageNet weights file for air-gapped machines
    backbone_lr_scale: float = 0.1  # pretrained only: the backbone learns at lr * this
    freeze_epochs: int = 1  # pretrained only: epochs the backbone stays frozen at the start


@dataclass
class TrainParams:
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: int = 1
    augment: str = "auto"  # auto | light | strong: flowerlab.data.transforms.choose_augmentation
    crop_scale_min: float | None = None  # None: the augment preset's value (also below)
    trivial_augment: bool | None = None
    random_erasing: float | None = None
    mix: float | None = None  # probability of CutMix or MixUp on a training batch
    progressive_resize: bool | None = None  # None: flowerlab.data.transforms.choose_progressive
    patience: int = 20
    export: str = "last"  # last | best: flowerlab.trainer.exported_checkpoint
    precision: str = "auto"  # flowerlab.hardware.choose_precision
    channels_last: bool | None = None  # None: flowerlab.hardware.choose_channels_last
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    profiler: str | None = None  # simple | advanced | pytorch: Lightning's profilers
    resume: bool = False  # train: continue from the last full checkpoint where there is one


@dataclass
class EvaluateParams:
    batch_size: int = 256
    misclassified_images: int = 16


@dataclass
class OptimizeParams:
    max_accuracy_drop: float = 0.005  # a faster artifact may lose at most this much val accuracy
    calibration_images: int = 256  # training images that calibrate the int8 candidate


@dataclass
class VaeParams:
    latent_dim: int = 32
    width: int = 16
    image_size: int = 32
    beta: float = 0.1
    loss: VaeLoss = VaeLoss.mse
    lr: float = 3e-3
    epochs: int = 6
    batch_size: int = 128
    patience: int = 4


@dataclass
class Params:
    seed: int = 42
    lr: float = 4e-3
    epochs: int = 8
    batch_size: int | None = None  # None: flowerlab.data.datamodule.auto_batch_size
    data: DataParams = field(default_factory=DataParams)
    split: SplitParams = field(default_factory=SplitParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    optimize: OptimizeParams = field(default_factory=OptimizeParams)
    vae: VaeParams = field(default_factory=VaeParams)


_POSITIVE_INTS = ("epochs", "data.image_size", "data.samples_per_class",
                  "evaluate.batch_size", "vae.latent_dim", "vae.width", "vae.image_size",
                  "vae.epochs", "vae.batch_size", "train.devices", "train.num_nodes",
                  "optimize.calibration_images")
_POSITIVE_FLOATS = ("lr", "vae.lr")
_NON_NEGATIVE = ("seed", "train.weight_decay", "train.warmup_epochs", "train.patience",
                 "train.num_workers", "evaluate.misclassified_images", "vae.beta", "model.freeze_epochs",
                 "vae.patience")
_PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
PROFILERS = ("simple", "advanced", "pytorch")
# Beyond the 96-224 px the recipes are for: the prepared store alone is images x size^2 x 3 bytes
# (10,000 px: 7.2 GB for 24 photos, and training was killed for memory).
MAX_IMAGE_SIZE = 1024
AUGMENT_PRESETS = ("auto", "light", "strong")
EXPORTS = ("last", "best")


def _get(params: Params, dotted: str):
    value = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _floats(node: object, prefix: str = "") -> list[tuple[str, float]]:
    """Every float value in the params tree, with its dotted key."""
    found = []
    for item in fields(node):
        value = getattr(node, item.name)
        if is_dataclass(value):
            found += _floats(value, f"{prefix}{item.name}.")
        elif isinstance(value, float):
            found.append((prefix + item.name, value))
    return found


def validate(params: Params) -> Params:
    """Check the values that types alone cannot; raise ConfigError naming the key."""
    for key, value in _floats(params):  # nan passes every comparison below; inf most of them
        if not math.isfinite(value):
            raise ConfigError(f"params: '{key}' must be a finite number, got {value!r}")
    for key in _POSITIVE_INTS + _POSITIVE_FLOATS:
        if _get(params, key) <= 0:
            raise ConfigError(f"params: '{key}' must be > 0, got {_get(params, key)!r}")
    for key in _NON_NEGATIVE:
        if _get(params, key) < 0:
            raise ConfigError(f"params: '{key}' must be >= 0, got {_get(params, key)!r}")
    # BatchNorm cannot train on a batch of one image: both networks have it.
    if params.batch_size is not None and params.batch_size < 2:
        raise ConfigError(f"params: 'batch_size' must be null (auto) or at least 2 (BatchNorm needs 2 "
                          f"images a batch), got {params.batch_size!r}")
    if params.vae.batch_size < 2:
        raise ConfigError(f"params: 'vae.batch_size' must be at least 2 (BatchNorm needs 2 images a "
                          f"batch), got {params.vae.batch_size!r}")
    if not 16 <= params.data.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"params: 'data.image_size' must be between 16 and {MAX_IMAGE_SIZE}, "
                          f"got {params.data.image_size}")
    if params.vae.image_size % 8 or not 16 <= params.vae.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"params: 'vae.image_size' must be a multiple of 8 between 16 and "
                          f"{MAX_IMAGE_SIZE}, got {params.vae.image_size}")
    if not 0 < params.model.backbone_lr_scale <= 1:
        raise ConfigError("params: 'model.backbone_lr_scale' must be in (0, 1], "
                          f"got {params.model.backbone_lr_scale!r}")
    if params.train.augment not in AUGMENT_PRESETS:
        raise ConfigError(f"params: 'train.augment' must be one of {AUGMENT_PRESETS}, "
                          f"got {params.train.augment!r}")
    if params.train.export not in EXPORTS:
        raise ConfigError(f"params: 'train.export' must be one of {EXPORTS}, got {params.train.export!r}")
    if params.train.crop_scale_min is not None and not 0 < params.train.crop_scale_min <= 1:
        raise ConfigError("params: 'train.crop_scale_min' must be null or in (0, 1]")
    if params.train.random_erasing is not None and not 0 <= params.train.random_erasing <= 1:
        raise ConfigError("params: 'train.random_erasing' must be null or in [0, 1]")
    if params.train.mix is not None and not 0 <= params.train.mix <= 1:
        raise ConfigError("params: 'train.mix' must be null or in [0, 1]")
    if not 0 <= params.train.label_smoothing < 1:
        raise ConfigError("params: 'train.label_smoothing' must be in [0, 1)")
    if not 0 <= params.optimize.max_accuracy_drop < 1:
        raise ConfigError("params: 'optimize.max_accuracy_drop' must be in [0, 1), "
                          f"got {params.optimize.max_accuracy_drop!r}")
    split = params.split
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(split, key) < 1:
            raise ConfigError(f"params: 'split.{key}' must be between 0 and 1, "
                              f"got {getattr(split, key)!r}")
    if split.val_fraction + split.test_fraction >= 1:
        raise ConfigError("params: 'split.val_fraction' + 'split.test_fraction' must be < 1")
    if params.train.precision not in _PRECISIONS:
        raise ConfigError(f"params: 'train.precision' must be one of {_PRECISIONS}, "
                          f"got {params.train.precision!r}")
    if params.train.profiler is not None and params.train.profiler not in PROFILERS:
        raise ConfigError(f"params: 'train.profiler' must be null or one of {PROFILERS}, "
                          f"got {params.train.profiler!r}")
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml into a typed, validated :class:`Params`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:  # a syntax error would otherwise escape as a traceback
        raise ConfigError(f"params: {path} is not valid YAML: {' '.join(str(error).split())}") from None
    schema = OmegaConf.structured(Params)
    try:
        merged = OmegaConf.merge(schema, loaded)
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        reason = str(error).splitlines()[0]
        what = "bad key" if isinstance(error, ConfigKeyError) else "bad value for"  # a typo, or a wrong value
        raise ConfigError(f"params: {what} '{key}' in {path}: {reason}") from None
    return validate(params)
