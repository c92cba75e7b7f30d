"""Image transforms on stored uint8 tensors: training augmentation, evaluation, VAE input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: a random resized crop (area fraction from ``crop_scale_min`` to 1,
    aspect ratio within ``ratio``), a horizontal flip, then optionally TrivialAugmentWide and
    random erasing with probability ``random_erasing``; per batch, CutMix or MixUp with
    probability ``mix`` (:class:`BatchMix`)."""

    crop_scale_min: float
    ratio: tuple[float, float]
    trivial_augment: bool
    random_erasing: float
    mix: float = 0.0


# light: for tiny images such as the embedded 32-px set, whose petal shapes are class features;
# strong: for photos at 64 px and up (measured on 960 real photos, 128 px: see the README).
PRESETS = {"light": Augmentation(0.85, (0.9, 1.1), False, 0.0),
           "strong": Augmentation(0.25, (3 / 4, 4 / 3), True, 0.25)}
STRONG_MIN_IMAGE_SIZE = 64


def choose_augmentation(preset: str, image_size: int, **overrides) -> tuple[str, Augmentation]:
    """The preset's name (``auto``: ``strong`` from ``STRONG_MIN_IMAGE_SIZE`` px, else ``light``)
    and its settings, with the ``overrides`` that are not None put over them."""
    if preset == "auto":
        preset = "strong" if image_size >= STRONG_MIN_IMAGE_SIZE else "light"
    chosen = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    return preset, chosen


def describe(name: str, augmentation: Augmentation) -> str:
    return f"{name} " + " ".join(f"{k}={v}" for k, v in asdict(augmentation).items())


def train_transform(image_size: int, augmentation: Augmentation) -> v2.Compose:
    """Training augmentation on uint8 tensors, ending in float images in [0, 1]."""
    steps = [v2.RandomResizedCrop(image_size, scale=(augmentation.crop_scale_min, 1.0),
                                  ratio=augmentation.ratio, antialias=True),
             v2.RandomHorizontalFlip()]
    if augmentation.trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augmentation.random_erasing > 0:
        steps.append(v2.RandomErasing(p=augmentation.random_erasing))
    return v2.Compose(steps)


class BatchMix:
    """A DataLoader ``collate_fn``: with probability ``p`` a batch gets torchvision's CutMix or
    MixUp (one of them at random), and its labels become class probabilities (N, classes)."""

    def __init__(self, num_classes: int, p: float):
        self.p = p
        self.mix = v2.RandomChoice([v2.CutMix(num_classes=num_classes), v2.MixUp(num_classes=num_classes)])

    def __call__(self, samples):
        images, labels = default_collate(samples)
        if torch.rand(()) < self.p:
            images, labels = self.mix(images, labels)
        return images, labels


def eval_transform() -> v2.Compose:
    """Evaluation input: the stored (already resized) image as floats in [0, 1]."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def vae_transform(image_size: int) -> v2.Compose:
    """Stored uint8 image -> float in [0, 1] at the VAE's size (Resize is a no-op when equal)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True)])
