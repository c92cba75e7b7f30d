"""Image transforms on stored uint8 tensors: training augmentation, evaluation, VAE input."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
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


def crop_boxes(count: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], tries: int = 10) -> torch.Tensor:
    """``count`` random crop boxes ``(left, top, width, height)`` in whole pixels, drawn as
    torchvision's ``RandomResizedCrop.get_params`` draws them (area fraction in ``scale``,
    log-uniform aspect ratio in ``ratio``, the first of ``tries`` draws that fits, else the
    centred crop of the clamped ratio), for a whole batch at once."""
    target = torch.empty(count, tries).uniform_(*scale) * (height * width)
    aspect = torch.empty(count, tries).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    w, h = (target * aspect).sqrt().round(), (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # none fits: the whole image, cut to the nearest allowed aspect ratio (as torchvision does)
    fallback_w, fallback_h = width, height
    if width / height < ratio[0]:
        fallback_h = round(width / ratio[0])
    elif width / height > ratio[1]:
        fallback_w = round(height * ratio[1])
    missed = ~fits.any(dim=1)
    w, h = w.masked_fill(missed, fallback_w), h.masked_fill(missed, fallback_h)
    left = (torch.rand(count) * (width - w + 1)).floor().clamp_(max=width - w)
    top = (torch.rand(count) * (height - h + 1)).floor().clamp_(max=height - h)
    left = torch.where(missed, ((width - w) / 2).floor(), left)
    top = torch.where(missed, ((height - h) / 2).floor(), top)
    return torch.stack([left, top, w, h], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box ``(left, top, width, height)`` resized to ``size`` x ``size`` (bilinear) and
    mirrored where ``flips``: one affine ``grid_sample`` for the whole float batch (N, C, H, W)."""
    n, _, height, width = images.shape
    left, top, w, h = boxes.to(images.dtype).unbind(dim=1)
    # normalised input x = a * (normalised output x) + b, with align_corners=False (pixel edges at -1, 1)
    scale_x, scale_y = w / width, h / height
    theta = torch.zeros(n, 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = torch.where(flips, -scale_x, scale_x)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    """The training augmentation as a DataLoader ``collate_fn`` over stored uint8 images: each
    image gets its own random resized crop and horizontal flip, computed for the whole batch in
    one ``grid_sample`` (per-image torchvision transforms cost 0.3 ms an image at 32 px, 16% of a
    training step on the 2-core EPYC); then, image by image, TrivialAugmentWide and random erasing
    when the augmentation has them; then CutMix or MixUp on the batch with probability ``mix``,
    which turns the labels into class probabilities (N, classes)."""

    def __init__(self, image_size: int, augmentation: Augmentation, num_classes: int):
        self.size, self.augmentation = image_size, augmentation
        self.trivial = v2.TrivialAugmentWide() if augmentation.trivial_augment else None
        erasing = augmentation.random_erasing
        self.erase = v2.RandomErasing(p=erasing) if erasing > 0 else None
        self.mix = BatchMix(num_classes, augmentation.mix) if augmentation.mix > 0 else None

    def __call__(self, samples):
        images, labels = default_collate(samples)
        n, _, height, width = images.shape
        boxes = crop_boxes(n, height, width, (self.augmentation.crop_scale_min, 1.0), self.augmentation.ratio)
        images = resized_crops(images.float(), boxes, torch.rand(n) < 0.5, self.size)
        if self.trivial is not None:  # it works on uint8 images, one at a time
            stored = images.round_().clamp_(0, 255).to(torch.uint8)
            images = torch.stack([self.trivial(image) for image in stored]).float()
        images = images.div_(255)
        if self.erase is not None:
            images = torch.stack([self.erase(image) for image in images])
        return self.mix.apply(images, labels) if self.mix is not None else (images, labels)


def eval_transform() -> v2.Compose:
    """Evaluation input: the stored (already resized) image as floats in [0, 1]."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def vae_transform(image_size: int) -> v2.Compose:
    """Stored uint8 image -> float in [0, 1] at the VAE's size (Resize is a no-op when equal)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True)])
