"""Training augmentation: the presets `train.augment: auto` picks, overrides, and the transform."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from flowerlab.data.batched import crop_boxes, resized_crops
from flowerlab.data.transforms import (
    PRESETS,
    BatchAugment,
    choose_augmentation,
    choose_progressive,
    progressive_size,
)


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


@pytest.mark.parametrize(("size", "low"), [(128, 64), (224, 112), (96, 48), (64, 32), (16, 16)])
def test_progressive_sizes_grow_from_half_to_the_full_size(size: int, low: int) -> None:
    sizes = [progressive_size(epoch, 20, size) for epoch in range(20)]
    assert sizes[:6] == [low] * 6  # the first 30% of the epochs
    assert sizes[17:] == [size] * 3  # from 85% on
    assert sizes == sorted(sizes) and all(s % 16 == 0 for s in sizes)
    if size - low >= 48:
        assert len(set(sizes)) >= 4, sizes  # it grows in steps, not in one jump


def test_the_last_epoch_trains_at_the_full_size_however_few_the_epochs() -> None:
    assert progressive_size(0, 1, 128) == 128
    assert [progressive_size(epoch, 2, 128) for epoch in range(2)] == [64, 128]
    assert [progressive_size(epoch, 3, 224) for epoch in range(3)] == [112, 112, 224]


@pytest.mark.parametrize(("requested", "size", "expected"),
                         [(None, 32, False), (None, 63, False), (None, 64, True), (None, 224, True),
                          (False, 224, False), (True, 32, True)])
def test_progressive_resizing_is_for_photos_unless_set(requested, size: int, expected: bool) -> None:
    chosen, why = choose_progressive(requested, size)
    assert chosen is expected and why


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_batch_augment_gives_float_images_of_the_training_size(preset: str) -> None:
    torch.manual_seed(0)
    samples = [(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8), label) for label in range(6)]
    images, labels = BatchAugment(40, PRESETS[preset], num_classes=6)(samples)
    assert images.shape == (6, 3, 40, 40) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and labels.tolist() == list(range(6))


def test_each_image_of_a_batch_gets_its_own_crop_and_flip() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    _, wide = choose_augmentation("light", 32, crop_scale_min=0.3)  # crop and flip only
    images, _ = BatchAugment(32, wide, num_classes=1)([(image, 0)] * 16)
    distinct = {tuple(x.flatten()[:64].tolist()) for x in images}
    assert len(distinct) == 16  # one set of crop parameters for the whole batch would give 1 or 2


def test_resized_crops_equal_torchvisions_crop_and_resize() -> None:
    """Inside the crop the pixels are torchvision's (bilinear) ``resized_crop``; on the output's
    outermost pixels the batch crop blends in the true neighbours, where torchvision repeats the
    crop's edge."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 20, 30) * 255
    box = torch.tensor([[4.0, 3.0, 16.0, 12.0]])  # left, top, width, height
    reference = v2.functional.resized_crop(image, top=3, left=4, height=12, width=16, size=[24, 24],
                                           antialias=False)
    cropped = resized_crops(image, box, torch.tensor([False]), 24)
    mirrored = resized_crops(image, box, torch.tensor([True]), 24)
    inner = (..., slice(1, -1), slice(1, -1))
    assert torch.allclose(cropped[inner], reference[inner], atol=1e-3)
    assert torch.allclose(mirrored[inner], reference.flip(-1)[inner], atol=1e-3)
    whole = resized_crops(image, torch.tensor([[0.0, 0.0, 30.0, 20.0]]), torch.tensor([False]), 20)
    assert torch.allclose(whole, v2.functional.resize(image, [20, 20], antialias=False), atol=1e-3)


def test_crop_boxes_follow_the_scale_and_ratio_and_stay_inside_the_image() -> None:
    torch.manual_seed(0)
    boxes = crop_boxes(2000, 60, 80, (0.25, 1.0), (3 / 4, 4 / 3))
    assert torch.equal(boxes, boxes.round())  # whole pixels, as torchvision crops
    left, top, w, h = boxes.unbind(dim=1)
    assert bool((left >= 0).all() and (top >= 0).all() and (left + w <= 80).all() and (top + h <= 60).all())
    assert (left + w == 80).any() and (left == 0).any()  # every position is reachable
    area, aspect = w * h / (60 * 80), w / h
    assert area.min() >= 0.24 and area.max() <= 1 and area.std() > 0.1  # 0.24: rounding to pixels
    assert aspect.min() >= 0.73 and aspect.max() <= 1.36
    # no draw can fit (a 1:1 crop of at least 90% of a 4:1 image): the centred crop of ratio 1
    left, top, w, h = crop_boxes(5, 10, 40, (0.9, 1.0), (1.0, 1.0)).unbind(dim=1)
    assert w.tolist() == [10.0] * 5 and h.tolist() == [10.0] * 5 and left.tolist() == [15.0] * 5


def test_random_erasing_erases_a_patch() -> None:
    torch.manual_seed(0)
    white = [(torch.full((3, 64, 64), 255, dtype=torch.uint8), 0)] * 4
    _, always = choose_augmentation("light", 64, random_erasing=1.0)
    erased, _ = BatchAugment(64, always, num_classes=1)(white)
    kept, _ = BatchAugment(64, PRESETS["light"], num_classes=1)(white)
    assert all((image == 0).any() for image in erased) and torch.allclose(kept, torch.ones_like(kept))


def test_batch_augment_mixes_batches_with_probability_mix() -> None:
    torch.manual_seed(0)
    samples = [(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8), label) for label in range(4)]
    _, always = choose_augmentation("light", 16, mix=1.0)
    _, labels = BatchAugment(16, always, num_classes=5)(samples)
    assert labels.shape == (4, 5) and torch.allclose(labels.sum(dim=1), torch.ones(4))


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
