"""Training augmentation: the presets `train.augment: auto` picks, overrides, and the transform."""

from __future__ import annotations

import pytest
import torch

from flowerlab.data.transforms import PRESETS, choose_augmentation, train_transform


@pytest.mark.parametrize(("size", "expected"),
                         [(32, "light"), (63, "light"), (64, "strong"), (224, "strong")])
def test_auto_picks_light_for_tiny_images_and_strong_for_photos(size: int, expected: str) -> None:
    name, augmentation = choose_augmentation("auto", size)
    assert name == expected and augmentation == PRESETS[expected]


def test_an_explicit_preset_wins_over_the_size_and_set_values_override_it() -> None:
    assert choose_augmentation("light", 224) == ("light", PRESETS["light"])
    name, augmentation = choose_augmentation("strong", 32, crop_scale_min=0.5, trivial_augment=None,
                                             random_erasing=0.0)
    assert name == "strong" and augmentation.crop_scale_min == 0.5 and augmentation.random_erasing == 0.0
    assert augmentation.trivial_augment is PRESETS["strong"].trivial_augment  # None keeps the preset's


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_train_transform_gives_float_images_of_the_training_size(preset: str) -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    out = train_transform(48, PRESETS[preset])(image)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_random_erasing_erases_a_patch() -> None:
    torch.manual_seed(0)
    white = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    _, always = choose_augmentation("light", 64, random_erasing=1.0)
    erased = train_transform(64, always)(white)
    kept = train_transform(64, PRESETS["light"])(white)
    assert (erased == 0).any() and bool((kept == 1).all())


def test_batch_mix_turns_labels_into_class_probabilities_or_leaves_the_batch_alone() -> None:
    from flowerlab.data.transforms import BatchMix

    torch.manual_seed(0)
    samples = [(torch.rand(3, 16, 16), label) for label in (0, 1, 2, 3)]
    images, labels = BatchMix(num_classes=5, p=1.0)(samples)
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4, 5)
    assert torch.allclose(labels.sum(dim=1), torch.ones(4)) and bool((labels[:, 4] == 0).all())
    assert (labels.max(dim=1).values < 1).any()  # some label mass moved to another image's class
    images, labels = BatchMix(num_classes=5, p=0.0)(samples)
    assert labels.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("train_images", "batch"), [(6120, 128), (2560, 128), (2559, 64), (720, 32),
                                                     (1020, 32), (100, 16), (0, 16)])
def test_auto_batch_size_gives_small_photo_sets_enough_steps(train_images: int, batch: int) -> None:
    from flowerlab.data.datamodule import auto_batch_size

    assert auto_batch_size(train_images) == batch
