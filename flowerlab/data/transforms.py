"""Image transforms on stored uint8 tensors: training augmentation, evaluation, VAE input."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_transform(image_size: int, crop_scale_min: float, trivial_augment: bool,
                    random_erasing: float) -> v2.Compose:
    """Training augmentation on uint8 tensors, ending in float images in [0, 1]."""
    # Near-square crops only: petal shapes are class features, so keep them undistorted.
    steps = [v2.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), ratio=(0.9, 1.1),
                                  antialias=True),
             v2.RandomHorizontalFlip()]
    if trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps)


def eval_transform() -> v2.Compose:
    """Evaluation input: the stored (already resized) image as floats in [0, 1]."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def vae_transform(image_size: int) -> v2.Compose:
    """Stored uint8 image -> float in [0, 1] at the VAE's size (Resize is a no-op when equal)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True)])
