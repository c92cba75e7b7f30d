"""torchvision's training augmentations for a whole batch at once, each image with its own random
parameters drawn as torchvision draws them: random resized crops with flips, TrivialAugmentWide
and random erasing.

Image by image, torchvision's TrivialAugmentWide took 10.2 ms and RandomErasing 2.3 ms for 32
images at 128 px on the 2-core AMX Xeon, which kept the bf16 training step waiting 7.8% of the
time (``python -m benchmarks.train_speed``). Here each op runs once on all the images that drew
it, with their magnitudes as a tensor; the tests check every op against torchvision's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.functional import _get_inverse_affine_matrix
from torchvision.transforms.v2 import functional as TF


def _box_sides(count: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], tries: int):
    """``tries`` draws of box sides for ``count`` images: ``sqrt(area * aspect)`` and
    ``sqrt(area / aspect)`` in whole pixels, the area a fraction of the image uniform in ``scale``,
    the aspect log-uniform in ``ratio``. Each caller says which side is the width."""
    target = torch.empty(count, tries).uniform_(*scale) * (height * width)
    aspect = torch.empty(count, tries).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    return (target * aspect).sqrt().round(), (target / aspect).sqrt().round()


def _first_fit(w: torch.Tensor, h: torch.Tensor, height: int, width: int, strict: bool):
    """Each image's first draw that fits ``(width, height)`` (strictly smaller when ``strict``),
    and which images had one."""
    fits = (w > 0) & (h > 0) & ((w < width) & (h < height) if strict else (w <= width) & (h <= height))
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    return w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)


def _offsets(w: torch.Tensor, h: torch.Tensor, height: int, width: int):
    left = (torch.rand(len(w)) * (width - w + 1)).floor().clamp_(max=width - w)
    top = (torch.rand(len(h)) * (height - h + 1)).floor().clamp_(max=height - h)
    return left, top


def crop_boxes(count: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], tries: int = 10) -> torch.Tensor:
    """``count`` random crop boxes ``(left, top, width, height)`` in whole pixels, drawn as
    torchvision's ``RandomResizedCrop.get_params`` draws them (area fraction in ``scale``,
    log-uniform aspect ratio in ``ratio``, the first of ``tries`` draws that fits, else the
    centred crop of the clamped ratio), for a whole batch at once."""
    w, h = _box_sides(count, height, width, scale, ratio, tries)
    w, h, found = _first_fit(w, h, height, width, strict=False)
    # none fits: the whole image, cut to the nearest allowed aspect ratio (as torchvision does)
    fallback_w, fallback_h = width, height
    if width / height < ratio[0]:
        fallback_h = round(width / ratio[0])
    elif width / height > ratio[1]:
        fallback_w = round(height * ratio[1])
    w, h = w.masked_fill(~found, fallback_w), h.masked_fill(~found, fallback_h)
    left, top = _offsets(w, h, height, width)
    left = torch.where(found, left, ((width - w) / 2).floor())
    top = torch.where(found, top, ((height - h) / 2).floor())
    return torch.stack([left, top, w, h], dim=1)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, height, width), align_corners=False)`` computed elementwise
    rather than as its batched matrix product with an inner size of 3: 0.51 against 1.33 ms for 16
    grids at 224 px, 0.37 against 0.91 ms for 32 at 128 px (2-core AMX Xeon, medians)."""
    xs = torch.linspace(-1.0, 1.0, width) * ((width - 1) / width)
    ys = torch.linspace(-1.0, 1.0, height)[:, None] * ((height - 1) / height)
    t = theta[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    grid = t[:, :, 0] * xs + t[:, :, 1] * ys + t[:, :, 2]  # (N, 2, height, width)
    return grid.permute(0, 2, 3, 1)


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
    return F.grid_sample(images, affine_grid(theta, size, size), mode="bilinear", padding_mode="border",
                         align_corners=False)


PER_IMAGE_CROPS_FROM = 160  # px: see uint8_resized_crops


def uint8_resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                        size: int) -> torch.Tensor:
    """:func:`resized_crops` from uint8 images to uint8. From ``PER_IMAGE_CROPS_FROM`` px it is
    torchvision's ``resized_crop`` image by image, whose uint8 kernel beats one float
    ``grid_sample`` there (16 images at 224 px: 14.7 against 18.6 ms for the whole augmentation;
    24 at 160 px: 11.9 against 14.4; 32 at 128 px: 10.9 against 10.1, on the 2-core AMX Xeon)."""
    if size < PER_IMAGE_CROPS_FROM:
        return resized_crops(images.float(), boxes, flips, size).round_().clamp_(0, 255).to(torch.uint8)
    crops = []
    for image, (left, top, w, h), flip in zip(images, boxes.long().tolist(), flips.tolist()):
        crop = TF.resized_crop(image, top=top, left=left, height=h, width=w, size=[size, size],
                               antialias=True)
        crops.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(crops)


class BatchRandomErasing:
    """torchvision's ``RandomErasing`` (value 0) for a float batch (N, C, H, W): each image, with
    probability ``p``, gets one rectangle of zeros drawn as torchvision draws it (area fraction in
    ``scale``, log-uniform ``ratio`` of height to width, strictly smaller than the image, the
    first of 10 draws that fits, else left alone)."""

    def __init__(self, p: float, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)):
        self.p, self.scale, self.ratio = p, scale, ratio

    def boxes(self, count: int, height: int, width: int):
        """Boxes ``(left, top, width, height)`` and which images get erased."""
        h, w = _box_sides(count, height, width, self.scale, self.ratio, 10)  # height = sqrt(area * ratio)
        w, h, found = _first_fit(w, h, height, width, strict=True)
        left, top = _offsets(w, h, height, width)
        return torch.stack([left, top, w, h], dim=1), found & (torch.rand(count) < self.p)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Erases in place, one slice per erased image."""
        boxes, erase = self.boxes(images.shape[0], *images.shape[-2:])
        for index in erase.nonzero()[:, 0].tolist():
            left, top, w, h = (int(v) for v in boxes[index])
            images[index, :, top:top + h, left:left + w] = 0.0
        return images


SPACE = v2.TrivialAugmentWide._AUGMENTATION_SPACE  # op -> (magnitudes for (bins, height, width), signed)
OPS = list(SPACE)


def _blend(images: torch.Tensor, degenerate, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with one factor per image: ``image * f + degenerate * (1 - f)``."""
    ratio = factors.view(-1, 1, 1, 1)
    return images.mul(ratio).add_(degenerate * (1 - ratio)).clamp_(0, 255).to(torch.uint8)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(images.float(), num_output_channels=1).floor_()


def _affine(images: torch.Tensor, matrices: list[list[float]]) -> torch.Tensor:
    """torchvision's tensor ``affine`` (nearest, zeros outside) with one inverse matrix per image:
    its matrices act on pixel coordinates about the centre, :func:`affine_grid` on [-1, 1]."""
    n, _, h, w = images.shape
    m = torch.tensor(matrices, dtype=torch.float32).view(n, 2, 3)
    theta = torch.stack([m[:, 0, 0], m[:, 0, 1] * (h / w), m[:, 0, 2] * (2 / w),
                         m[:, 1, 0] * (w / h), m[:, 1, 1], m[:, 1, 2] * (2 / h)], dim=1).view(n, 2, 3)
    out = F.grid_sample(images.float(), affine_grid(theta, h, w), mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.round_().to(torch.uint8)


def _sharpness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_sharpness`` with one factor per image. Its 3x3 blur (weights 1/13,
    the centre 5/13, the border left alone) is a separable box sum plus 4 centres here: for 32
    images at 128 px its depthwise ``conv2d`` took 0.66 ms an image, ``avg_pool2d`` 0.48, this 0.17."""
    out = images.float()
    rows = out[..., :, :-2] + out[..., :, 1:-1] + out[..., :, 2:]
    inner = out[..., 1:-1, 1:-1]
    boxes = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    blurred = boxes.add_(inner, alpha=4).div_(13).round_()
    inner.add_((blurred - inner) * (1 - factors.view(-1, 1, 1, 1)))
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    bits = bits.to(torch.int64)
    masks = ((1 << bits) - 1) << (8 - bits)
    return images & masks.to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    return torch.where(images >= (255.0 * magnitudes).view(-1, 1, 1, 1), 255 - images, images)


def _matrix(name: str, magnitude: float, height: int, width: int) -> list[float]:
    """The inverse affine matrix torchvision's TrivialAugmentWide uses for a geometric op."""
    if name == "Rotate":
        return _get_inverse_affine_matrix([0.0, 0.0], -magnitude, [0.0, 0.0], 1.0, [0.0, 0.0])
    if name.startswith("Translate"):
        shift = [float(int(magnitude)), 0.0] if name.endswith("X") else [0.0, float(int(magnitude))]
        return _get_inverse_affine_matrix([0.0, 0.0], 0.0, shift, 1.0, [0.0, 0.0])
    degrees = math.degrees(math.atan(magnitude))  # shears are about the corner (0, 0)
    shear = [degrees, 0.0] if name.endswith("X") else [0.0, degrees]
    return _get_inverse_affine_matrix([-0.5 * width, -0.5 * height], 0.0, [0.0, 0.0], 1.0, shear)


def _geometric(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    return _affine(images, [_matrix(OPS[op], magnitude, h, w)
                            for op, magnitude in zip(ops.tolist(), magnitudes.tolist())])


def _colour(function):
    return lambda images, ops, magnitudes: function(images, magnitudes)


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# each group runs once per batch on the images that drew one of its ops: the geometric ops share
# one grid_sample
GROUPS = {"Geometric": _geometric, **{name: _colour(function) for name, function in {
    "Identity": lambda x, m: x,
    "Brightness": lambda x, m: _blend(x.float(), 0.0, 1 + m),
    "Color": lambda x, m: _blend(x.float(), _grey(x), 1 + m),
    "Contrast": lambda x, m: _blend(x.float(), _grey(x).mean(dim=(-3, -2, -1), keepdim=True), 1 + m),
    "Sharpness": lambda x, m: _sharpness(x, 1 + m),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda x, m: TF.autocontrast(x),
    "Equalize": lambda x, m: TF.equalize(x),
}.items()}}
GROUP_OF_OP = torch.tensor([list(GROUPS).index("Geometric" if op in GEOMETRIC else op) for op in OPS])


class BatchTrivialAugmentWide:
    """torchvision's ``TrivialAugmentWide`` (31 magnitude bins, nearest, zeros outside) for a uint8
    RGB batch (N, 3, H, W): each image draws its own op, magnitude bin and sign, and each op then
    runs once on all the images that drew it."""

    bins = 31

    def draw(self, count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's op (an index into :data:`OPS`) and signed magnitude (0 for ops without)."""
        table = torch.stack([torch.zeros(self.bins) if values is None else values.float()
                             for values in (SPACE[op][0](self.bins, height, width) for op in OPS)])
        signed = torch.tensor([SPACE[op][1] for op in OPS])
        ops = torch.randint(len(OPS), (count,))
        magnitudes = table[ops, torch.randint(self.bins, (count,))]
        flip = signed[ops] & (torch.rand(count) <= 0.5)
        return ops, torch.where(flip, -magnitudes, magnitudes)

    def apply(self, images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        """The images sorted by group, each group's slice transformed, put back in order."""
        groups = GROUP_OF_OP[ops]
        order = torch.argsort(groups, stable=True)
        # index_select, not images[order]: 0.12 against 0.77 ms for 16 uint8 images at 224 px
        images, ops, magnitudes = images.index_select(0, order), ops[order], magnitudes[order]
        parts, start = [], 0
        for function, count in zip(GROUPS.values(), torch.bincount(groups, minlength=len(GROUPS)).tolist()):
            if count:
                part = slice(start, start + count)
                parts.append(function(images[part], ops[part], magnitudes[part]))
                start += count
        return torch.cat(parts).index_select(0, torch.argsort(order))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        return self.apply(images, *self.draw(n, height, width))
