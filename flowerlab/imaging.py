"""Images in and out: decoding and resizing shared by prepare (every stored image) and the service
(every request), and the conversions of float images back to 8-bit pixels, PNG bytes and grids.

Both prepare and the service go through :func:`decode_image` and :func:`square_resize`, so a
served photo is preprocessed exactly as the evaluated test images were.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F
from torchvision.utils import make_grid

# Pillow's own default (about 89 megapixels); the service passes a tighter limit.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# What transparent pixels become, in prepare and the service alike.
ALPHA_BACKGROUND = (255, 255, 255)
EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """The bytes are not a readable image (unknown format, truncated or corrupt)."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed: a possible decompression bomb."""


class ExtremeAspectError(ValueError):
    """Resized to the model's size on its shorter side, the image would have more pixels than allowed."""


def decode_image(source: bytes | str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None) -> Image.Image:
    """Open an image fully (first frame of animations) as RGB, or raise a typed error.

    With ``draft_size``, a JPEG at least twice that on both sides is decoded at 1/2, 1/4 or 1/8
    scale in the DCT domain (Pillow's ``draft``), still at least ``draft_size`` on both sides, so
    :func:`square_resize` to that size costs a fraction of the full decode. Prepare and the service
    pass the model's image size, so both see the same pixels for the same file. ``max_pixels`` limits
    the pixels decoded, so a JPEG over it is accepted where its draft is within it."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    # Pillow warns past its own limit (an error here) and refuses twice that. Under a limit of ours at
    # least as tight, ours decides, so the message names it and the image's size; the same images pass.
    ours_decides = max_pixels is not None and max_pixels <= Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if ours_decides else "error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                image.seek(0)
                if draft_size is not None and image.format == "JPEG":
                    image.draft(image.mode, (draft_size, draft_size))
                # The limit is on the pixels decoded: a 108-MP phone JPEG drafted to 1/8 is 1.7 MP.
                decoded = image.size[0] * image.size[1]
                if max_pixels is not None and decoded > max_pixels:
                    drafted = "" if image.size == (width, height) else f", {decoded} once drafted"
                    raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels"
                                             f"{drafted}, more than the limit of {max_pixels}")
                return to_rgb(upright(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise pillow_refusal(error, max_pixels) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(unrecognised(source)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageTooLargeError):
            raise
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from None


def unrecognised(source: bytes | str | Path) -> str:
    """Why Pillow could not identify the file, and what to do where we can tell."""
    if isinstance(source, bytes):
        head = source[:16]
    else:
        with Path(source).open("rb") as file:
            head = file.read(16)
    if not head:
        return "not a recognised image format: the file is empty"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif"):
        return "not a recognised image format: HEIC/AVIF (an iPhone's default): convert it to JPEG"
    return "not a recognised image format"


def pillow_refusal(error: Exception, max_pixels: int | None) -> ImageTooLargeError:
    """Pillow's refusal of an image over its own limit, as :class:`ImageTooLargeError` naming the
    image's pixels and ``max_pixels`` where the image is over that too, else Pillow's limit."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(error))
    if found is None:  # a wording this does not know
        return ImageTooLargeError(f"image rejected as a decompression bomb: {error}")
    pixels, pillow_limit = (int(group) for group in found.groups())
    if max_pixels is not None and pixels > max_pixels:
        return ImageTooLargeError(f"image is {pixels} pixels, more than the limit of {max_pixels} "
                                  f"(a possible decompression bomb)")
    return ImageTooLargeError(f"image is {pixels} pixels, more than Pillow's decompression bomb limit "
                              f"of {pillow_limit}")


def upright(image: Image.Image) -> Image.Image:
    """The image as the camera meant it to be seen: its EXIF orientation applied."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit greyscale scaled (not clipped), transparency composited on
    :data:`ALPHA_BACKGROUND` (palette, greyscale-with-alpha and RGBA alike), CMYK converted."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = Image.fromarray(scaled_to_8_bits(np.asarray(image), image.mode), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # a loaded copy even for RGB: the file closes after decode_image


def scaled_to_8_bits(levels: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (or 32-bit integer) greyscale levels as 8-bit: ``round(level * 255 / top)``, where top
    is 65535 for 16-bit modes and for "I" images with a level over 255 (else 255), clipped to 0-255.

    In integer arithmetic, 4 bytes a pixel: float64 took about 1 GB at 40 megapixels. It equals the
    rounded quotient exactly: ``level * 255 / 65535`` is never within 1/514 of a half."""
    top = 65535 if mode.startswith("I;16") or levels.max(initial=0) > 255 else 255
    scaled = np.clip(levels, 0, top, out=np.empty(levels.shape, np.uint32), casting="unsafe")  # one copy
    scaled *= 255
    scaled += top // 2
    scaled //= top
    return scaled.astype(np.uint8)


def square_resize(image: Image.Image | torch.Tensor, size: int,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: a ``uint8`` tensor of shape (3, size, size).

    Refuses (:class:`ExtremeAspectError`) an image whose resized shorter side would make the
    intermediate image more than ``max_pixels``: a 1x30000 PNG of 201 bytes passes every pixel limit,
    but at 224 px it would be 1.5 gigapixels (prepare's memory grew by 4.7 GB)."""
    tensor = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ImageDecodeError(f"expected an image of shape (C, H, W) with 1 or 3 channels, "
                               f"got {tuple(tensor.shape)}")
    height, width = tensor.shape[-2:]
    if not height or not width:
        raise ImageDecodeError(f"empty image: {width}x{height} pixels")
    resized = resized_pixels((width, height), size)
    if max_pixels is not None and resized > max_pixels:
        raise ExtremeAspectError(f"aspect ratio too extreme: {width}x{height} resized to {size} pixels on "
                                 f"its shorter side would be {resized} pixels, more than the limit of "
                                 f"{max_pixels}")
    if tensor.dtype.is_floating_point:
        tensor = to_uint8(tensor)
    tensor = tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor
    tensor = F.resize(tensor, size, antialias=True)
    return F.center_crop(tensor, [size, size]).contiguous()


def resized_pixels(image_size: tuple[int, int], size: int) -> int:
    """Pixels of the intermediate image square_resize makes: the shorter side scaled to ``size``."""
    short, long = sorted(image_size)
    return size * (size * long // max(short, 1))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (clamped) as 8-bit pixels, rounded as a PNG encoder would store them."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def to_png(image: torch.Tensor) -> bytes:
    """A float image (3, H, W) in [0, 1] as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image).permute(1, 2, 0).contiguous().numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def grid_png(images: torch.Tensor) -> bytes:
    """Float images (N, 3, S, S) as one PNG: ceil(sqrt(N)) per row, 2-pixel black padding."""
    return to_png(make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=2))


def image_grid(images: torch.Tensor, nrow: int = 8) -> Image.Image:
    """Float images (N, 3, H, W) in [0, 1] as one PIL grid, ``nrow`` images per row."""
    return F.to_pil_image(make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=1))


def paired_grid(images: torch.Tensor, recons: torch.Tensor, nrow: int = 8) -> Image.Image:
    """Rows of ``nrow`` inputs, each followed by a row of their reconstructions."""
    nrow = min(nrow, len(images))
    rows = []
    for start in range(0, len(images) - nrow + 1, nrow):  # whole rows only
        rows += [images[start:start + nrow], recons[start:start + nrow]]
    return image_grid(torch.cat(rows), nrow)
