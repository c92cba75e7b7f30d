"""Image transforms on stored uint8 tensors: training augmentation, evaluation, VAE input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from flowerlab.data.batched import (
    BatchRandomErasing,
    BatchTrivialAugmentWide,
    crop_boxes,
    resized_crops,
    uint8_resized_crops,
)


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


# Progressive resizing (as in fast.ai's and FFCV's fast ResNet recipes): the first epochs train on
# crops at half the size, the size then grows in steps of 16 px, and the last epochs train at the
# full size the model is evaluated and served at. Measured on 960 real photos at 128 px (README,
# "Your own photos"): at equal training time, +4 to +7 points of test accuracy.
PROGRESSIVE_LOW_FRACTION = 0.5
PROGRESSIVE_RAMP = (0.3, 0.85)  # fractions of the epochs: low size before, full size after
PROGRESSIVE_STEP = 16


def choose_progressive(requested: bool | None, image_size: int) -> tuple[bool, str]:
    """Whether training resizes progressively (``requested``; None: from ``STRONG_MIN_IMAGE_SIZE``
    px, i.e. photos, not the embedded set), and why."""
    if requested is not None:
        return requested, "set"
    if image_size >= STRONG_MIN_IMAGE_SIZE:
        return True, f"auto: images of {STRONG_MIN_IMAGE_SIZE} px and up"
    return False, f"auto: off under {STRONG_MIN_IMAGE_SIZE} px"


def progressive_size(epoch: int, epochs: int, image_size: int) -> int:
    """The training crop size for ``epoch`` (0-based) of ``epochs``: half of ``image_size`` (a
    multiple of 16, at least 16) until ``PROGRESSIVE_RAMP[0]`` of the epochs, then growing linearly in
    16-px steps to ``image_size``, reached at ``PROGRESSIVE_RAMP[1]`` and kept to the end. The last
    epoch is always at ``image_size``, however few the epochs."""
    if epoch >= epochs - 1:
        return image_size
    step = PROGRESSIVE_STEP
    low = min(image_size, max(step, round(image_size * PROGRESSIVE_LOW_FRACTION / step) * step))
    start, end = (fraction * epochs for fraction in PROGRESSIVE_RAMP)
    progress = min(max((epoch - start) / max(end - start, 1), 0.0), 1.0)
    return min(image_size, int(round((low + progress * (image_size - low)) / step)) * step)


def describe(name: str, augmentation: Augmentation) -> str:
    return f"{name} " + " ".join(f"{k}={v}" for k, v in asdict(augmentation).items())


class BatchMix:
    """With probability ``p`` a batch gets torchvision's CutMix or MixUp (one of them at random),
    and its labels become class probabilities (N, classes). Also a DataLoader ``collate_fn``."""

    def __init__(self, num_classes: int, p: float):
        self.p = p
        self.mix = v2.RandomChoice([v2.CutMix(num_classes=num_classes), v2.MixUp(num_classes=num_classes)])

    def __call__(self, samples):
        return self.apply(*default_collate(samples))

    def apply(self, images: torch.Tensor, labels: torch.Tensor):
        if torch.rand(()) < self.p:
            images, labels = self.mix(images, labels)
        return images, labels


class BatchAugment:
    """The training augmentation as a DataLoader ``collate_fn`` over stored uint8 images. Each image
    gets its own random resized crop and horizontal flip, then TrivialAugmentWide and random
    erasing when the augmentation has them, all computed for the whole batch at once
    (:mod:`flowerlab.data.batched`: torchvision's per-image transforms kept the 128-px bf16 step
    waiting 7.8% of the time on the 2-core AMX Xeon); then CutMix or MixUp on the batch with
    probability ``mix``, which turns the labels into class probabilities (N, classes)."""

    def __init__(self, image_size: int, augmentation: Augmentation, num_classes: int):
        self.size, self.augmentation = image_size, augmentation
        self.trivial = BatchTrivialAugmentWide() if augmentation.trivial_augment else None
        erasing = augmentation.random_erasing
        self.erase = BatchRandomErasing(p=erasing) if erasing > 0 else None
        self.mix = BatchMix(num_classes, augmentation.mix) if augmentation.mix > 0 else None

    def __call__(self, samples):
        images, labels = default_collate(samples)
        n, _, height, width = images.shape
        boxes = crop_boxes(n, height, width, (self.augmentation.crop_scale_min, 1.0), self.augmentation.ratio)
        flips = torch.rand(n) < 0.5
        if self.trivial is not None:  # it works on uint8 images
            images = self.trivial(uint8_resized_crops(images, boxes, flips, self.size)).float()
        else:
            images = resized_crops(images.float(), boxes, flips, self.size)
        images = images.div_(255)
        if self.erase is not None:
            images = self.erase(images)
        return self.mix.apply(images, labels) if self.mix is not None else (images, labels)


def eval_transform() -> v2.Compose:
    """Evaluation input: the stored (already resized) image as floats in [0, 1]."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def vae_transform(image_size: int) -> v2.Compose:
    """Stored uint8 image -> float in [0, 1] at the VAE's size (Resize is a no-op when equal)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True)])
