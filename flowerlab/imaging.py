"""Decoding and resizing shared by prepare (every stored image) and the service (every request).

Both go through :func:`decode_image` and :func:`square_resize`, so a served photo is
preprocessed exactly as the evaluated test images were.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

# Pillow's own default (about 89 megapixels); the service passes a tighter limit.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageDecodeError(ValueError):
    """The bytes are not a readable image (unknown format, truncated or corrupt)."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed: a possible decompression bomb."""


def decode_image(source: bytes | str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image fully (first frame of animations) as RGB, or raise a typed error."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"image is {width}x{height} = {width * height} pixels, "
                        f"more than the limit of {max_pixels}")
                image.seek(0)
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageTooLargeError):
            raise
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from None


def square_resize(image: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: a ``uint8`` tensor of shape (3, size, size)."""
    tensor = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ImageDecodeError(f"expected an image of shape (C, H, W) with 1 or 3 channels, "
                               f"got {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point:
        tensor = (tensor.clamp(0, 1) * 255).round().to(torch.uint8)
    tensor = tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor
    tensor = F.resize(tensor, size, antialias=True)
    return F.center_crop(tensor, [size, size]).contiguous()
