"""The batched augmentations (flowerlab.data.batched) against torchvision's per-image transforms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from flowerlab.data.batched import (
    GEOMETRIC,
    OPS,
    PER_IMAGE_CROPS_FROM,
    SPACE,
    BatchRandomErasing,
    BatchTrivialAugmentWide,
    affine_grid,
    crop_boxes,
    resized_crops,
    uint8_resized_crops,
)

HEIGHT, WIDTH = 40, 48  # not square, so that a swapped height and width shows


def photos(count: int) -> torch.Tensor:
    """Smooth uint8 RGB images with the full range of values, as photos have."""
    torch.manual_seed(1)
    noise = torch.randint(0, 256, (count, 3, HEIGHT, WIDTH)).float()
    return F.avg_pool2d(noise, 3, 1, 1).sub_(64).mul_(2).clamp_(0, 255).round_().to(torch.uint8)


def torchvision_op(image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    reference = v2.TrivialAugmentWide()
    return reference._apply_image_or_video_transform(image, op, magnitude, fill={type(image): None},
                                                     interpolation=reference.interpolation)


@pytest.mark.parametrize("op", OPS)
def test_each_op_equals_torchvisions_at_every_magnitude(op: str) -> None:
    """Every magnitude bin of the op (and both signs where it has them) on its own image, in one
    batch: each output equals torchvision's, to one level (float rounding) for colour ops and on
    99% of pixels for geometric ones (nearest neighbour at pixel boundaries)."""
    table, signed = SPACE[op]
    values = table(31, HEIGHT, WIDTH)
    magnitudes = torch.zeros(4) if values is None else values.float()
    if signed:
        magnitudes = torch.cat([magnitudes, -magnitudes])
    images = photos(len(magnitudes))
    ops = torch.full((len(magnitudes),), OPS.index(op))
    out = BatchTrivialAugmentWide().apply(images, ops, magnitudes)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for image, result, magnitude in zip(images, out, magnitudes.tolist()):
        difference = (result.int() - torchvision_op(image, op, magnitude).int()).abs()
        if op in GEOMETRIC:
            assert (difference == 0).float().mean() >= 0.99, (op, magnitude)
        else:
            assert difference.max() <= 1 and (difference == 0).float().mean() >= 0.95, (op, magnitude)


def test_a_mixed_batch_gives_each_image_its_own_op_in_its_own_place() -> None:
    """All ops in one shuffled batch: the grouping puts every result back at its image."""
    images = photos(56)
    augment = BatchTrivialAugmentWide()
    torch.manual_seed(3)
    ops, magnitudes = augment.draw(len(images), HEIGHT, WIDTH)
    assert len(set(ops.tolist())) == len(OPS)
    out = augment.apply(images, ops, magnitudes)
    for image, result, op, magnitude in zip(images, out, ops.tolist(), magnitudes.tolist()):
        same = result.int() - torchvision_op(image, OPS[op], magnitude).int()
        assert (same == 0).float().mean() >= 0.95, (OPS[op], magnitude)


def test_the_draw_follows_torchvisions_augmentation_space() -> None:
    torch.manual_seed(0)
    ops, magnitudes = BatchTrivialAugmentWide().draw(14_000, HEIGHT, WIDTH)
    counts = torch.bincount(ops, minlength=len(OPS)).float() / len(ops)
    assert counts.min() > 0.06 and counts.max() < 0.083  # uniform: 1/14 = 0.071
    for index, op in enumerate(OPS):
        table, signed = SPACE[op]
        values = table(31, HEIGHT, WIDTH)
        drawn = magnitudes[ops == index]
        if values is None:
            assert bool((drawn == 0).all())
            continue
        allowed = set(values.float().tolist())
        assert set(drawn.abs().tolist()) == allowed  # every bin, and nothing else
        assert bool((drawn < 0).any()) == signed


def test_affine_grid_equals_torchs() -> None:
    torch.manual_seed(0)
    theta = torch.randn(5, 2, 3)
    expected = F.affine_grid(theta, [5, 3, HEIGHT, WIDTH], align_corners=False)
    assert torch.allclose(affine_grid(theta, HEIGHT, WIDTH), expected, atol=1e-5)


def zero_boxes(erased: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Each image's zero pixels as ``(top, left, height, width)``, asserting they form a rectangle."""
    boxes = []
    for image in erased:
        zero = (image == 0).all(dim=0)
        if not zero.any():
            boxes.append(None)
            continue
        rows, cols = zero.any(dim=1).nonzero()[:, 0], zero.any(dim=0).nonzero()[:, 0]
        top, left, h, w = int(rows[0]), int(cols[0]), len(rows), len(cols)
        assert int(zero.sum()) == h * w and bool(zero[top:top + h, left:left + w].all())
        boxes.append((top, left, h, w))
    return boxes


def test_random_erasing_erases_one_rectangle_drawn_as_torchvision_draws_it() -> None:
    erasing = BatchRandomErasing(p=1.0)
    torch.manual_seed(0)
    drawn, erase = erasing.boxes(400, HEIGHT, WIDTH)
    torch.manual_seed(0)
    erased = zero_boxes(erasing(torch.full((400, 3, HEIGHT, WIDTH), 0.5)))
    assert bool(erase.all())  # with p=1 every image has a patch that fits
    assert erased == [(int(top), int(left), int(h), int(w)) for left, top, w, h in drawn]
    areas = torch.tensor([h * w / (HEIGHT * WIDTH) for _, _, h, w in erased])
    aspects = torch.tensor([h / w for _, _, h, w in erased])
    assert areas.min() >= 0.015 and areas.max() <= 0.36 and areas.std() > 0.05  # pixel rounding
    assert aspects.min() >= 0.25 and aspects.max() <= 3.6 and (aspects < 1).any() and (aspects > 1).any()
    assert any(top == 0 for top, *_ in erased) and any(top + h == HEIGHT for top, _, h, _ in erased)
    # strictly smaller than the image, as torchvision: on 6 x 6 images many draws round to 6
    boxes, erase = erasing.boxes(2000, 6, 6)
    assert bool((boxes[erase][:, 2:] < 6).all()) and bool((boxes[erase][:, 2:] == 5).any())


def test_random_erasing_erases_with_probability_p_and_leaves_the_rest() -> None:
    torch.manual_seed(0)
    images = torch.rand(4000, 3, 12, 12) * 0.9 + 0.1  # no zeros of their own
    erased = BatchRandomErasing(p=0.25)(images.clone())
    touched = (erased == 0).flatten(1).any(dim=1)
    assert 0.22 < touched.float().mean() < 0.28
    assert torch.equal(erased[~touched], images[~touched])
    assert torch.equal(erased[touched][erased[touched] != 0], images[touched][erased[touched] != 0])


@pytest.mark.parametrize("size", [PER_IMAGE_CROPS_FROM - 1, PER_IMAGE_CROPS_FROM])
def test_uint8_crops_equal_the_float_crops_rounded(size: int) -> None:
    """Below ``PER_IMAGE_CROPS_FROM`` px the uint8 crops are the batched float ones, rounded; from
    it torchvision's image by image, which agree with them inside the crop (at its edges
    torchvision repeats the crop's border where ``grid_sample`` blends in the true neighbours).
    The images are stored at the training size, as ``prepare`` stores them."""
    torch.manual_seed(0)
    images = F.avg_pool2d(torch.randint(0, 256, (6, 3, size, size)).float(), 5, 1, 2).round_().to(torch.uint8)
    boxes = crop_boxes(6, size, size, (0.25, 1.0), (3 / 4, 4 / 3))
    flips = torch.tensor([True, False] * 3)
    out = uint8_resized_crops(images, boxes, flips, size)
    expected = resized_crops(images.float(), boxes, flips, size).round_()
    assert out.dtype == torch.uint8 and out.shape == (6, 3, size, size)
    inner = (..., slice(2, -2), slice(2, -2))
    assert (out.float() - expected)[inner].abs().max() <= 1
